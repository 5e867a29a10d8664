"""Huge mount tables: 100, 1,000 and 10,000 entries, as a Kubernetes node
has them (per pod: an overlay root, a tmpfs /dev/shm and a tmpfs of
secrets, bind mounts of its volumes from a few real loop ext4
filesystems), made in a private mount namespace that dies with the
measurement.  Per size, alternating round by round: `vmsnap mounts`,
the plan alone (in process, after the imports), `vmsnap run --dry-run
--mount <one loop filesystem>`, and util-linux `findmnt` on the same
table.  At 100 entries also the start-up alone: the interpreter, `vmsnap
--version`, and `python -X importtime` of `--version` and of `mounts`,
grouped by module.  The package's bytecode is compiled first, as an
installed package has it (without it every start compiles every module).
With VMSNAP_SCALE_BEFORE=DIR (a source tree's src/, for instance a `git
archive` of the commit before a change), the same commands from that tree
take turns with these in every round ("..., before").

    python bench/scale_mounts.py --child [SIZES...]   (as root; it makes its
                                                      own namespace when not --child)
"""

from __future__ import annotations

import ctypes
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

from vmsnap_native.devtools import loopfs  # noqa: E402
from vmsnap_native.devtools.stats import summary  # noqa: E402

_SCRIPT = os.path.join(os.path.dirname(sys.executable), "vmsnap")
VMSNAP = [_SCRIPT] if os.path.exists(_SCRIPT) else [sys.executable, "-m", "vmsnap_native"]
LOOP_FILESYSTEMS = 4
MS_BIND = 4096
ALTERNATIVES = ["vmsnap mounts", "plan (in process)", "vmsnap run --dry-run", "findmnt"]
BEFORE = os.environ.get("VMSNAP_SCALE_BEFORE")
if BEFORE:
    ALTERNATIVES += ["vmsnap mounts, before", "vmsnap run --dry-run, before"]


def before(*args) -> list:
    """The vmsnap command of the tree in BEFORE, started as the installed script starts it."""
    return [sys.executable, "-c", "import sys; sys.path.insert(0, %r); from vmsnap_native.cli "
            "import main; sys.exit(main())" % BEFORE, *args]


def compile_bytecode() -> None:
    import compileall

    import vmsnap_native
    for d in [os.path.dirname(vmsnap_native.__file__)] + \
            ([os.path.join(BEFORE, "vmsnap_native")] if BEFORE else []):
        compileall.compile_dir(d, quiet=1)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]


def mount(source, target, fstype, flags=0, data=None):
    if _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                   data.encode() if data else None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "mount %s on %s: %s" % (source, target, os.strerror(e)))


def table_size() -> int:
    with open("/proc/self/mountinfo", "rb") as f:
        return f.read().count(b"\n")


class Node:
    """Pods' mounts under BASE (a tmpfs), added until the table has N entries."""

    def __init__(self, base: str, volumes: list):
        self.base, self.volumes, self.pods = base, volumes, 0
        self.lower = os.path.join(base, "layers")
        for layer in ("l1", "l2"):
            os.makedirs(os.path.join(self.lower, layer))
        self.kinds = {"overlay": 0, "tmpfs": 0, "bind": 0}

    def _pod(self):
        i = self.pods
        self.pods += 1
        d = os.path.join(self.base, "pods", "p%d" % i)
        for sub in ("root", "upper", "work", "shm", "secrets", "v0", "v1", "v2"):
            os.makedirs(os.path.join(d, sub))
        yield lambda: mount("overlay", d + "/root", "overlay", 0,
                            "lowerdir=%s/l2:%s/l1,upperdir=%s/upper,workdir=%s/work"
                            % (self.lower, self.lower, d, d)), "overlay"
        yield lambda: mount("shm", d + "/shm", "tmpfs", 0, "size=64k"), "tmpfs"
        yield lambda: mount("secrets", d + "/secrets", "tmpfs", 0, "size=64k"), "tmpfs"
        for k in range(3):
            vol = os.path.join(self.volumes[(i + k) % len(self.volumes)], "pv%d" % (i % 50))
            os.makedirs(vol, exist_ok=True)
            yield (lambda v=vol, k=k: mount(v, "%s/v%d" % (d, k), None, MS_BIND)), "bind"

    def grow(self, n: int):
        have = table_size()
        while have < n:
            for do, kind in self._pod():
                if have >= n:
                    break
                do()
                self.kinds[kind] += 1
                have += 1
        return table_size()


# CPU time (user + system) of each timed command, in the order timed: on a
# loaded machine the wall time mostly measures the wait for a core, the CPU
# time what the command itself costs
CPU_MS = []


def timed(argv, env=None) -> float:
    c0 = _children_cpu_ms()
    t0 = time.perf_counter_ns()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, stderr = p.communicate()
    ms = (time.perf_counter_ns() - t0) / 1e6
    CPU_MS.append(_children_cpu_ms() - c0)
    if p.returncode not in (0,):
        raise RuntimeError("%s: exit %d: %s" % (argv, p.returncode, stderr.decode()[-500:]))
    return ms


def _children_cpu_ms() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (ru.ru_utime + ru.ru_stime) * 1e3


def _cpu_of(fn) -> tuple:
    """(wall ms, CPU ms) of FN, a timed() command or the plan in process."""
    if fn is None:
        return None
    c0 = time.process_time()
    n = len(CPU_MS)
    wall = fn()
    cpu = CPU_MS[-1] if len(CPU_MS) > n else (time.process_time() - c0) * 1e3
    return wall, cpu


def measure(size: int, rounds: int, cfg: str, loop_mount: str, log=None) -> dict:
    from vmsnap_native import plan as planmod
    runners = {
        "vmsnap mounts": lambda: timed([*VMSNAP, "mounts", "--config", cfg]),
        "plan (in process)": lambda: _timed_plan(planmod, cfg),
        "vmsnap run --dry-run": lambda: timed([*VMSNAP, "run", "--dry-run", "--json", "--config",
                                               cfg, "--mount", loop_mount, "--log-file", ""]),
        "findmnt": lambda: timed(["findmnt"]),
    }
    if BEFORE:
        runners["vmsnap mounts, before"] = lambda: timed(before("mounts", "--config", cfg))
        runners["vmsnap run --dry-run, before"] = lambda: timed(before(
            "run", "--dry-run", "--json", "--config", cfg, "--mount", loop_mount, "--log-file", ""))
    for fn in runners.values():   # warm: page cache, dentries
        fn()
    res = {k: [] for k in ALTERNATIVES}
    cpu = {k: [] for k in ALTERNATIVES}
    la0 = os.getloadavg()
    for r in range(rounds):
        order = ALTERNATIVES[r % len(ALTERNATIVES):] + ALTERNATIVES[:r % len(ALTERNATIVES)]
        for k in order:
            wall, c = _cpu_of(runners[k])
            res[k].append(wall)
            cpu[k].append(c)
    out = {"entries": size, "rounds": rounds, "loadavg": [round(x, 2) for x in la0 +
                                                          os.getloadavg()[:1]]}
    for k in ALTERNATIVES:
        s = summary(res[k])
        out[k] = {"median_ms": s["median"], "min_ms": s["min"], "max_ms": s["max"], "ms": res[k],
                  "cpu_median_ms": summary(cpu[k])["median"], "cpu_ms": cpu[k]}
    if log:
        log("  %d mounts: %s" % (size, ", ".join("%s %.0f ms" % (k, out[k]["median_ms"])
                                                  for k in ALTERNATIVES)))
    return out


def _timed_plan(planmod, cfg) -> float:
    t0 = time.perf_counter_ns()
    planmod.make_plan(cfg, mounts=None)
    return (time.perf_counter_ns() - t0) / 1e6


def importtime(argv_tail, env) -> dict:
    """`python -X importtime -m vmsnap_native ARGV`: total, self time per
    top-level package, and per vmsnap_native module what it costs with the
    outside modules it pulls in first (each outside module's time goes to
    the nearest vmsnap_native module that imported it; microseconds in,
    ms out)."""
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "vmsnap_native", *argv_tail],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    return dict(parse_importtime(p.stderr),
                argv=["python", "-X", "importtime", "-m", "vmsnap_native", *argv_tail])


def parse_importtime(stderr: str) -> dict:
    """The figures of importtime() from `-X importtime`'s output (printed
    children first, each level indented by two more spaces)."""
    groups, total, n = {}, 0, 0
    pending = []   # (depth, name, self_us, children): post-order, children first
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cum, field = line.split(":", 1)[1].split("|", 2)
        self_us = int(self_us)
        name = field.strip()
        depth = (len(field) - len(field.lstrip()) - 1) // 2
        kids = [x for x in pending if x[0] > depth]
        pending = [x for x in pending if x[0] <= depth] + [(depth, name, self_us, kids)]
        top = name.split(".")[0]
        groups[top] = groups.get(top, 0) + self_us
        total += self_us
        n += 1
    ours = {}

    def walk(node, owner):
        _, name, us, kids = node
        if name.startswith("vmsnap_native"):
            owner = name
        ours[owner] = ours.get(owner, 0) + us
        for k in kids:
            walk(k, owner)
    for node in pending:
        walk(node, "(before vmsnap_native: interpreter start-up)")
    return {"modules": n, "total_self_ms": round(total / 1e3, 1),
            "by_package_ms": {k: round(v / 1e3, 2) for k, v in
                              sorted(groups.items(), key=lambda kv: -kv[1])[:15]},
            "vmsnap_native_ms": {k: round(v / 1e3, 2) for k, v in
                                 sorted(ours.items(), key=lambda kv: -kv[1])[:20]},
            "vmsnap_modules_imported": sorted(k for k in ours if k.startswith("vmsnap_native"))}


def startup(cfg: str, rounds: int) -> dict:
    """At the current table: the start-up alone, alternating."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    runners = {
        "python -c pass": lambda: timed([sys.executable, "-c", "pass"]),
        "python -S -c pass": lambda: timed([sys.executable, "-S", "-c", "pass"]),
        "vmsnap --version": lambda: timed([*VMSNAP, "--version"]),
        "vmsnap mounts": lambda: timed([*VMSNAP, "mounts", "--config", cfg]),
    }
    if BEFORE:
        runners["vmsnap --version, before"] = lambda: timed(before("--version"))
        runners["vmsnap mounts, before"] = lambda: timed(before("mounts", "--config", cfg))
    names = list(runners)
    for fn in runners.values():
        fn()
    res = {k: [] for k in names}
    cpu = {k: [] for k in names}
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            wall, c = _cpu_of(runners[k])
            res[k].append(wall)
            cpu[k].append(c)
    out = {k: summary(v)["median"] for k, v in res.items()}
    cpu_out = {k: summary(v)["median"] for k, v in cpu.items()}
    fastest = {k: summary(v)["min"] for k, v in res.items()}
    # the import time, median of 3 of each
    imp = {}
    for label, tail in (("--version", ["--version"]), ("mounts", ["mounts", "--config", cfg])):
        runs = [importtime(tail, env) for _ in range(3)]
        runs.sort(key=lambda x: x["total_self_ms"])
        imp[label] = runs[1]
    return {"wall_median_ms": out, "wall_min_ms": fastest, "cpu_median_ms": cpu_out,
            "rounds": rounds, "importtime": imp,
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


def child(sizes, rounds, log) -> dict:
    """In a private mount namespace: build the table, measure at each size."""
    compile_bytecode()
    base = tempfile.mkdtemp(prefix="vmsnap-scale-node-")
    mount("scale-node", base, "tmpfs", 0, "size=512m,mode=700")
    fs = loopfs.LoopFilesystems(base)
    try:
        etc = os.path.join(base, "etc")
        os.makedirs(etc, mode=0o700)
        sys.path.insert(0, HERE)
        from scale_fs import make_config
        cfg = make_config(etc)
        volumes = fs.make(LOOP_FILESYSTEMS, size_mb=16, parent=None)
        node = Node(base, volumes)
        out = {"sizes": [], "startup": None}
        for size in sizes:
            t0 = time.monotonic()
            got = node.grow(size)
            if log:
                log("  table grown to %d entries in %.1f s (%s)" % (got, time.monotonic() - t0,
                                                                     node.kinds))
            if out["startup"] is None and size <= 100:
                out["startup"] = startup(cfg, rounds.get("startup", 10))
                out["startup"]["entries"] = got
            m = measure(got, rounds.get(size, 3), cfg, volumes[0], log)
            m["kinds"] = dict(node.kinds)
            out["sizes"].append(m)
        return out
    finally:
        # the loop filesystems (and their bind mounts) go first; the rest of
        # the table dies with the namespace
        subprocess.run(["umount", "-R", "-l", os.path.join(base, "pods")],
                       stderr=subprocess.DEVNULL)
        fs.teardown()
        subprocess.run(["umount", "-l", base], stderr=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)


def run(sizes=(100, 1000, 10000), rounds=None, log=None) -> dict:
    """Runs child() in a new private mount namespace; returns its figures."""
    rounds = rounds or {100: 12, 1000: 9, 10000: 7, "startup": 15}
    t0 = time.monotonic()
    fd, path = tempfile.mkstemp(prefix="vmsnap-scale-mounts-", suffix=".json")
    os.close(fd)
    try:
        p = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable,
                            os.path.abspath(__file__), "--child", "--out", path,
                            "--rounds", json.dumps(rounds), *map(str, sizes)], timeout=900)
        if p.returncode != 0:
            raise RuntimeError("mount-table bench failed (exit %d)" % p.returncode)
        with open(path) as f:
            out = json.load(f)
    finally:
        os.unlink(path)
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("sizes", type=int, nargs="*", default=[100, 1000])
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--rounds", default=None)
    a = ap.parse_args()
    log = lambda s: print(s, file=sys.stderr, flush=True)   # noqa: E731
    rounds = {(int(k) if k.isdigit() else k): v for k, v in json.loads(a.rounds).items()} \
        if a.rounds else {"startup": 5}
    if a.child:
        res = child(a.sizes, rounds, log)
        if a.out:
            with open(a.out, "w") as f:
                json.dump(res, f)
        else:
            print(json.dumps(res, indent=1))
    else:
        print(json.dumps(run(a.sizes, rounds, log), indent=1))
