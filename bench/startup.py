"""Start-up of the commands agents and monitoring run on every snapshot, at
a mount table of 100 entries, wall and CPU time, medians of N rounds (the
commands take turns within each round), the bytecode compiled first (as an
installed package has it):

- `python -S -c pass`, `python -c pass`: the interpreter;
- `vmsnap --version`;
- `vmsnap mounts` (with a configuration: trivial pre- and post-scripts);
- `vmsnap hook qemu-ga thaw` with no session open: a last call that finds
  nothing to do (its thin path: the session file looked up, nothing else);
- `vmsnap hook gce pre` and `vmsnap hook gce post`: a session's first call
  (it forks the session holder, which runs the pre-script and answers once
  the snapshot may begin) and its last call (the holder runs the
  post-script and answers).  The configuration names no mount to freeze
  (mountsToFreeze: []): nothing is frozen.

Everything runs in a private mount namespace with its own /run (tmpfs) and
runtime directory; the table is grown to 100 entries there with tmpfs and
bind mounts under a tmpfs of its own, and dies with the namespace.  With
VMSNAP_STARTUP_BEFORE=DIR (a source tree's src/, e.g. a `git archive` of an
earlier commit, with the core's .so copied in) the same commands from that
tree take turns with these ("..., before").  Also prints `python -X
importtime` of each command, grouped (median of 3 by total).

    python bench/startup.py [--rounds 15] [--entries 100] [--out F.json]   (as root)
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

BEFORE = os.environ.get("VMSNAP_STARTUP_BEFORE")
_SCRIPT = os.path.join(os.path.dirname(sys.executable), "vmsnap")
MS_BIND = 4096


def vmsnap(before: bool = False) -> list[str]:
    """The command as the installed `vmsnap` script starts it."""
    if before:
        return [sys.executable, "-c", "import sys; sys.path.insert(0, %r); from vmsnap_native.cli "
                "import main; sys.exit(main())" % BEFORE]
    if os.path.exists(_SCRIPT):
        return [_SCRIPT]
    return [sys.executable, "-c", "import sys; from vmsnap_native.cli import main; "
            "sys.exit(main())"]


def compile_bytecode() -> None:
    import compileall

    import vmsnap_native
    for d in [os.path.dirname(vmsnap_native.__file__)] + \
            ([os.path.join(BEFORE, "vmsnap_native")] if BEFORE else []):
        compileall.compile_dir(d, quiet=1)


def _children_cpu_ms() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (ru.ru_utime + ru.ru_stime) * 1e3


def timed(argv: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> tuple[float, float]:
    """(wall ms, CPU ms of the process and its waited-for children)."""
    c0 = _children_cpu_ms()
    t0 = time.perf_counter_ns()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=env)
    _, err = p.communicate()
    wall = (time.perf_counter_ns() - t0) / 1e6
    cpu = _children_cpu_ms() - c0
    if p.returncode not in ok:
        raise RuntimeError("%s: exit %d: %s" % (argv, p.returncode, err.decode()[-800:]))
    return wall, cpu


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def grow_table(base: str, n: int) -> int:
    """tmpfs and bind mounts under BASE until the table has N entries."""
    from scale_mounts import mount, table_size
    vol = os.path.join(base, "vol")
    os.makedirs(vol)
    i = 0
    while table_size() < n:
        d = os.path.join(base, "m%d" % i)
        os.makedirs(d)
        if i % 2:
            mount(vol, d, "", MS_BIND)
        else:
            mount("startup%d" % i, d, "tmpfs", 0, "size=64k")
        i += 1
    return table_size()


def make_config(etc: str) -> str:
    """Trivial root-only pre- and post-scripts; nothing to freeze, no hooks."""
    os.makedirs(etc, mode=0o755, exist_ok=True)
    for name in ("pre.sh", "post.sh"):
        path = os.path.join(etc, name)
        with open(path, "w") as f:
            f.write("#!/bin/sh\nexit 0\n")
        os.chmod(path, 0o700)
    cfg = os.path.join(etc, "config.json")
    fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"preScriptLocation": os.path.join(etc, "pre.sh"),
                   "postScriptLocation": os.path.join(etc, "post.sh"),
                   "timeoutInSeconds": 10, "freezeTimeoutInSeconds": 30,
                   "mountsToFreeze": [], "hooksDirectory": os.path.join(etc, "hooks.d")}, f)
    return cfg


def importtime(argv: list[str], env: dict[str, str]) -> dict:
    from scale_mounts import parse_importtime
    p = subprocess.run([sys.executable, "-X", "importtime", *argv[1:]] if argv[0] == sys.executable
                       else [sys.executable, "-X", "importtime", *argv], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    return parse_importtime(p.stderr)


def child(rounds: int, entries: int) -> dict:
    compile_bytecode()
    base = tempfile.mkdtemp(prefix="vmsnap-startup-")
    from scale_mounts import mount
    mount("startup-base", base, "tmpfs", 0, "size=16m,mode=755")
    env = dict(os.environ, VMSNAP_RUNTIME_DIR=os.path.join(base, "run"))
    env.pop("VMSNAP_CONFIG", None)
    try:
        cfg = make_config(os.path.join(base, "etc"))
        got = grow_table(os.path.join(base, "table"), entries)
        logf = ["--log-file", ""]
        variants: list[tuple[str, bool]] = [("", False)] + ([(", before", True)] if BEFORE else [])
        runners: dict[str, object] = {
            "python -S -c pass": lambda: timed([sys.executable, "-S", "-c", "pass"], env),
            "python -c pass": lambda: timed([sys.executable, "-c", "pass"], env),
        }
        for suffix, old in variants:
            v = vmsnap(old)
            runners["vmsnap --version" + suffix] = lambda v=v: timed([*v, "--version"], env)
            runners["vmsnap mounts" + suffix] = lambda v=v: timed([*v, "mounts", "--config", cfg],
                                                                 env)
            runners["vmsnap hook, last call, no session" + suffix] = lambda v=v: timed(
                [*v, "hook", "qemu-ga", *logf, "thaw"], env)
            runners["vmsnap hook, first call" + suffix] = lambda v=v: timed(
                [*v, "hook", "gce", "--config", cfg, *logf, "pre"], env)
            runners["vmsnap hook, last call" + suffix] = lambda v=v: timed(
                [*v, "hook", "gce", "--config", cfg, *logf, "post"], env)
        # a first call and the last call of its session are timed as a pair, in that order
        pairs = [k for k in runners if "first call" in k]
        order_keys = [k for k in runners if "hook, last call" not in k or "no session" in k]
        res: dict[str, list[float]] = {k: [] for k in runners}
        cpu: dict[str, list[float]] = {k: [] for k in runners}

        def one(k: str) -> None:
            w, c = runners[k]()   # type: ignore[operator]
            res[k].append(w)
            cpu[k].append(c)
            if k in pairs:
                last = k.replace("first call", "last call")
                w, c = runners[last]()   # type: ignore[operator]
                res[last].append(w)
                cpu[last].append(c)
        for k in order_keys:   # warm: page cache, dentries
            one(k)
        for k in res:
            res[k].clear()
            cpu[k].clear()
        la0 = os.getloadavg()
        for r in range(rounds):
            for k in order_keys[r % len(order_keys):] + order_keys[:r % len(order_keys)]:
                one(k)
        la1 = os.getloadavg()
        imp = {}
        for k in ("vmsnap --version", "vmsnap mounts", "vmsnap hook, last call, no session"):
            argv = {"vmsnap --version": [*vmsnap(), "--version"],
                    "vmsnap mounts": [*vmsnap(), "mounts", "--config", cfg],
                    "vmsnap hook, last call, no session": [*vmsnap(), "hook", "qemu-ga", *logf,
                                                           "thaw"]}[k]
            runs = sorted((importtime(argv, env) for _ in range(3)),
                          key=lambda x: x["total_self_ms"])
            imp[k] = runs[1]
        return {"entries": got, "rounds": rounds,
                "loadavg_before": [round(x, 2) for x in la0],
                "loadavg_after": [round(x, 2) for x in la1],
                "wall_median_ms": {k: round(median(v), 1) for k, v in res.items()},
                "cpu_median_ms": {k: round(median(v), 1) for k, v in cpu.items()},
                "wall_min_ms": {k: round(min(v), 1) for k, v in res.items()},
                "importtime": imp}
    finally:
        subprocess.run(["umount", "-R", "-l", base], stderr=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--entries", type=int, default=100)
    ap.add_argument("--out")
    ap.add_argument("--child", action="store_true")
    a = ap.parse_args()
    if not a.child:
        os.execvp("unshare", ["unshare", "-m", "--propagation", "private", sys.executable,
                              os.path.abspath(__file__), "--child", *sys.argv[1:]])
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run"], check=True)
    out = child(a.rounds, a.entries)
    text = json.dumps(out, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    w, c = out["wall_median_ms"], out["cpu_median_ms"]
    print("%d entries, %d rounds, load %s -> %s" % (out["entries"], out["rounds"],
                                                   out["loadavg_before"], out["loadavg_after"]))
    for k in w:
        print("  %-45s wall %7.1f ms   CPU %6.1f ms   (fastest %.1f)" % (k, w[k], c[k],
                                                                       out["wall_min_ms"][k]))
    for k, imp in out["importtime"].items():
        print("  importtime %s: %d modules, %.1f ms; %s" % (
            k, imp["modules"], imp["total_self_ms"],
            ", ".join("%s %.1f" % kv for kv in list(imp["vmsnap_native_ms"].items())[:8])))


if __name__ == "__main__":
    main()
