"""Many filesystems: 1 to 128 loop ext4, idle and with light writers on
half, frozen and thawed by util-linux `fsfreeze` one by one, a sequential
ioctl loop, vmsnap's freeze (the library call) and a whole `vmsnap run`
(the command, scripts included), the alternatives alternating round by
round on the same filesystems.

Per round: the whole operation (call to return), the freeze window (first
freeze issued to last thaw returned), each filesystem's blocked time (its
freeze issued to its thaw returned), and for `vmsnap run` the peak memory
of vmsnap, its guardian and its reaper (VmHWM of each, read by the
snapshot step while they all run, the main process's also from wait4
after it exits; and their PSS then, which counts the pages a forked helper
shares with its parent once) and the time of each phase.

The filesystems are made once (as many as the largest count) and each
count uses the first N of them: the others sit idle and are never frozen.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from common import Scratch

from vmsnap_native import freeze_filesystems
from vmsnap_native._core import core
from vmsnap_native.devtools.stats import summary

_SCRIPT = os.path.join(os.path.dirname(sys.executable), "vmsnap")
VMSNAP = [_SCRIPT] if os.path.exists(_SCRIPT) else [sys.executable, "-m", "vmsnap_native"]

# Rewrites an 8 MiB file in 256 KiB writes, 10 ms apart (25 MiB/s): dirty
# pages on every freeze without saturating a shared machine.
LIGHT = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)
block = b"l" * (256 << 10)
i = 0
while True:
    os.pwrite(fd, block, (i % 32) * len(block))
    i += 1
    time.sleep(0.01)
"""

# The snapshot step of the memory rounds: for vmsnap (its parent) and each
# of its helpers, "comm VmHWM-kB Pss-kB".
MEMSTEP = r"""
for p in $PPID $(pgrep -P $PPID); do
  c=$(cat /proc/$p/comm 2>/dev/null) || continue
  h=$(sed -n 's/^VmHWM:[^0-9]*\([0-9]*\).*/\1/p' /proc/$p/status)
  s=$(sed -n 's/^Pss:[^0-9]*\([0-9]*\).*/\1/p' /proc/$p/smaps_rollup)
  echo "$p $c $h $s"
done
"""

ALTERNATIVES = ["util-linux fsfreeze", "ioctl loop", "vmsnap freeze", "vmsnap run"]
BASELINE = "util-linux fsfreeze"


def fsfreeze_one_by_one(mounts, ctx):
    blocked = []
    t0 = time.monotonic_ns()
    starts = []
    for m in mounts:
        starts.append(time.monotonic_ns())
        subprocess.run(["fsfreeze", "-f", m], check=True)
    for m, s in zip(reversed(mounts), reversed(starts)):
        subprocess.run(["fsfreeze", "-u", m], check=True)
        blocked.append((time.monotonic_ns() - s) / 1e6)
    return {"window_ms": (time.monotonic_ns() - t0) / 1e6, "blocked_ms": blocked}


def ioctl_loop(mounts, ctx):
    _, lib = core()
    fds = [os.open(m, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) for m in mounts]
    try:
        blocked, starts = [], []
        t0 = time.monotonic_ns()
        for fd in fds:
            starts.append(time.monotonic_ns())
            if lib.vmsnap_fifreeze(fd) != 0:
                raise OSError("freeze failed")
        for fd, s in zip(reversed(fds), reversed(starts)):
            lib.vmsnap_fithaw(fd)
            blocked.append((time.monotonic_ns() - s) / 1e6)
        return {"window_ms": (time.monotonic_ns() - t0) / 1e6, "blocked_ms": blocked}
    finally:
        for fd in fds:
            os.close(fd)


def vmsnap_freeze(mounts, ctx):
    s = freeze_filesystems(mounts, timeout=60)
    with s:
        assert s.all_frozen, s.failures
    return {"window_ms": s.window_ms, "blocked_ms": [m.blocked_ms for m in s.mounts]}


def vmsnap_run(mounts, ctx):
    """The whole command; returns its figures and its memory."""
    argv = [*VMSNAP, "run", "--json", "--config", ctx["config"], "--log-file", "",
            "--freeze-timeout", "60"]
    for m in mounts:
        argv += ["--mount", m]
    argv += ["--", "sh", "-c", MEMSTEP]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = p.stdout.read()
    p.stdout.close()
    _, status, ru = os.wait4(p.pid, 0)   # ru_maxrss: the peak of vmsnap (or a helper), KiB
    p.returncode = os.waitstatus_to_exitcode(status)
    res = json.loads(out)
    assert res["status"] == "success" and res["freeze"]["mounts"], res
    hwm, pss, main = {}, 0, None
    for line in (res["snapshot"]["output"] or "").splitlines():
        f = line.split()
        if len(f) < 4:
            continue
        comm, h, s = f[1], int(f[2]), int(f[3])
        if comm == "sh":
            continue
        hwm[comm] = h
        pss += s
        if main is None:
            main = comm   # the first line is the parent: vmsnap itself
    if main is not None:
        hwm[main] = max(hwm[main], ru.ru_maxrss)
    phases = {ph["phase"]: ph["duration_ms"] for ph in res.get("phases") or []}
    return {"window_ms": res["freeze"]["window_ms"],
            "blocked_ms": [m["blocked_ms"] for m in res["freeze"]["mounts"]],
            "duration_ms": res["duration_ms"], "phases": phases,
            "memory": {"hwm_kib": hwm, "hwm_sum_mib": round(sum(hwm.values()) / 1024, 1),
                       "pss_sum_mib": round(pss / 1024, 1), "helpers": sorted(hwm)}}


RUNNERS = {"util-linux fsfreeze": fsfreeze_one_by_one, "ioctl loop": ioctl_loop,
           "vmsnap freeze": vmsnap_freeze, "vmsnap run": vmsnap_run}


class Writers:
    def __init__(self, mounts):
        self.procs = [subprocess.Popen([sys.executable, "-c", LIGHT, os.path.join(m, "light")])
                      for m in mounts]
        time.sleep(1.0 if mounts else 0)

    def stop(self):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def make_config(where: str) -> str:
    """A configuration with trivial pre- and post-scripts (root-only files)."""
    for name in ("pre.sh", "post.sh"):
        path = os.path.join(where, name)
        with open(path, "w") as f:
            f.write("#!/bin/sh\nexit 0\n")
        os.chmod(path, 0o700)
    cfg = os.path.join(where, "config.json")
    fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"preScriptLocation": os.path.join(where, "pre.sh"),
                   "postScriptLocation": os.path.join(where, "post.sh"),
                   "hooksDirectory": os.path.join(where, "hooks.d")}, f)
    return cfg


def scenario(mounts, load: str, rounds: int, ctx, log=None) -> list:
    n = len(mounts)
    writers = Writers(mounts[: max(1, n // 2)] if load == "light" else [])
    la0 = os.getloadavg()
    res = {k: {"op": [], "window": [], "blocked": [], "blocked_max": [], "duration": [],
               "phases": {}, "hwm": [], "pss": [], "helpers": None} for k in ALTERNATIVES}
    try:
        for r in range(rounds):
            order = ALTERNATIVES[r % len(ALTERNATIVES):] + ALTERNATIVES[:r % len(ALTERNATIVES)]
            for k in order:
                t0 = time.monotonic_ns()
                out = RUNNERS[k](mounts, ctx)
                t1 = time.monotonic_ns()
                e = res[k]
                e["op"].append((t1 - t0) / 1e6)
                e["window"].append(out["window_ms"])
                e["blocked"].extend(out["blocked_ms"])
                e["blocked_max"].append(max(out["blocked_ms"]))
                if "memory" in out:
                    e["duration"].append(out["duration_ms"])
                    for ph, ms in out["phases"].items():
                        e["phases"].setdefault(ph, []).append(ms)
                    e["hwm"].append(out["memory"]["hwm_sum_mib"])
                    e["pss"].append(out["memory"]["pss_sum_mib"])
                    e["helpers"] = out["memory"]["helpers"]
                time.sleep(0.05)
            if log:
                log("  %d fs %s: round %d/%d" % (n, load, r + 1, rounds))
    finally:
        writers.stop()
    la1 = os.getloadavg()
    base = summary(res[BASELINE]["op"])["median"]
    rows = []
    for k in ALTERNATIVES:
        e = res[k]
        op = summary(e["op"])
        row = {"filesystems": n, "load": load, "strategy": k, "rounds": rounds,
               "op_median_ms": op["median"], "op_min_ms": op["min"], "op_max_ms": op["max"],
               "window_median_ms": summary(e["window"])["median"],
               "blocked_median_ms": summary(e["blocked"])["median"],
               "blocked_max_median_ms": summary(e["blocked_max"])["median"],
               "op_ratio_to_fsfreeze": round(op["median"] / base, 4) if base else None,
               "loadavg": [round(x, 2) for x in la0 + la1[:1]], "ops_ms": e["op"]}
        if e["hwm"]:
            row.update({"run_duration_median_ms": summary(e["duration"])["median"],
                        "phases_median_ms": {ph: summary(v)["median"]
                                             for ph, v in e["phases"].items()},
                        "memory_hwm_sum_max_mib": max(e["hwm"]),
                        "memory_pss_sum_max_mib": max(e["pss"]),
                        "memory_processes": e["helpers"]})
        rows.append(row)
    return rows


def slopes(rows, key: str, load: str = "idle") -> dict:
    """Per alternative: KEY's growth per added filesystem between successive
    counts (ms per filesystem) and the exponent b of KEY ~ N^b from the two
    largest counts (1: linear; above 1: faster than linear)."""
    import math
    out = {}
    for k in ALTERNATIVES:
        pts = sorted((r["filesystems"], r[key]) for r in rows
                     if r["strategy"] == k and r["load"] == load and r.get(key) is not None)
        if len(pts) < 2:
            continue
        steps = [{"from": a[0], "to": b[0], "per_fs": round((b[1] - a[1]) / (b[0] - a[0]), 4)}
                 for a, b in zip(pts, pts[1:])]
        (n1, v1), (n2, v2) = pts[-2], pts[-1]
        expo = round(math.log(v2 / v1) / math.log(n2 / n1), 3) if v1 > 0 and v2 > 0 else None
        out[k] = {"per_fs_ms": steps, "exponent_top": expo}
    return out


def phase_slopes(rows, load: str = "idle") -> dict:
    """The same for each phase of `vmsnap run` and its peak memory."""
    import math
    pts = sorted((r["filesystems"], r) for r in rows
                 if r["strategy"] == "vmsnap run" and r["load"] == load)
    if len(pts) < 2:
        return {}
    out = {}
    names = set()
    for _, r in pts:
        names |= set(r["phases_median_ms"])
    series = {ph: [(n, r["phases_median_ms"].get(ph)) for n, r in pts] for ph in sorted(names)}
    series["memory_hwm_sum_mib"] = [(n, r["memory_hwm_sum_max_mib"]) for n, r in pts]
    series["memory_pss_sum_mib"] = [(n, r["memory_pss_sum_max_mib"]) for n, r in pts]
    for name, s in series.items():
        s = [(n, v) for n, v in s if v is not None]
        if len(s) < 2:
            continue
        (n1, v1), (n2, v2) = s[-2], s[-1]
        out[name] = {"values": s, "per_fs": round((v2 - v1) / (n2 - n1), 4),
                     "exponent_top": round(math.log(v2 / v1) / math.log(n2 / n1), 3)
                     if v1 > 0 and v2 > 0 else None}
    return out


def run(counts=(1, 4, 16, 64, 128), light=(4, 16), rounds=None, log=None) -> dict:
    """LIGHT: the counts also measured with light writers on half (not 64 or
    128 on a shared machine: 32 writers would take it over)."""
    rounds = rounds or {1: 6, 4: 6, 16: 5, 64: 3, 128: 3}
    etc = tempfile.mkdtemp(prefix="vmsnap-scale-etc-")
    ctx = {"config": make_config(etc)}
    rows = []
    t0 = time.monotonic()
    try:
        with Scratch(max(counts), size_mb=16) as sc:
            if log:
                log("  %d filesystems made in %.0f s" % (len(sc.mounts), time.monotonic() - t0))
            # the first freeze of a fresh ext4 writes out what mkfs left
            ioctl_loop(sc.mounts, ctx)
            for n in counts:
                rows += scenario(sc.mounts[:n], "idle", rounds.get(n, 3), ctx, log)
            for n in light:
                rows += scenario(sc.mounts[:n], "light", max(2, rounds.get(n, 3) // 2), ctx, log)
    finally:
        shutil.rmtree(etc, ignore_errors=True)
    return {"rows": rows, "slopes": {"op": slopes(rows, "op_median_ms"),
                                     "window": slopes(rows, "window_median_ms"),
                                     "blocked": slopes(rows, "blocked_median_ms")},
            "run_phases": phase_slopes(rows), "seconds": round(time.monotonic() - t0, 1)}


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, nargs="*", default=[1, 4, 16])
    ap.add_argument("--light", type=int, nargs="*", default=[])
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    out = run(a.n, a.light, {n: a.rounds for n in a.n + a.light},
              log=lambda s: print(s, file=sys.stderr, flush=True))
    for r in out["rows"]:
        print(json.dumps({k: v for k, v in r.items() if k != "ops_ms"}))
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=1))
