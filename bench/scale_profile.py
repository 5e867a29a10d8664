"""Where the time of the plan goes as things grow: cProfile of the plan
(`make_plan`, what `vmsnap mounts`, `vmsnap run` and `--dry-run` all do
first) and of `vmsnap mounts` in process, (a) with N loop filesystems
given as an explicit --mount list, N = 16, 64, 128, (b) at a mount table
of 10,000 entries (bench/scale_mounts.py's Kubernetes-like node).  Each
in its own private mount namespace with its own /run, as root; prints the functions by
their own time and writes bench/scale-profile.json.

    python bench/scale_profile.py [--counts 16 64 128] [--entries 10000]
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def top(prof: cProfile.Profile, n: int = 12) -> list:
    st = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (path, line, fn), (_cc, nc, tt, ct, _) in st.stats.items():
        rows.append({"function": "%s:%d(%s)" % (os.path.basename(path), line, fn),
                     "calls": nc, "own_ms": round(tt * 1e3, 2), "cumulative_ms": round(ct * 1e3, 2)})
    rows.sort(key=lambda r: -r["own_ms"])
    return rows[:n]


def profiled(fn, *a, **kw):
    prof = cProfile.Profile()
    t0 = time.perf_counter_ns()
    prof.enable()
    fn(*a, **kw)
    prof.disable()
    return {"wall_ms": round((time.perf_counter_ns() - t0) / 1e6, 2), "top": top(prof)}


def plain(fn, *a, **kw):
    best = None
    for _ in range(3):
        t0 = time.perf_counter_ns()
        fn(*a, **kw)
        ms = (time.perf_counter_ns() - t0) / 1e6
        best = ms if best is None else min(best, ms)
    return round(best, 2)


def child_filesystems(counts) -> dict:
    from common import Scratch

    from vmsnap_native import freeze_filesystems, mountinfo, plan
    out = {}
    with Scratch(max(counts), size_mb=16) as sc:
        for n in counts:
            ms = sc.mounts[:n]
            mounts = mountinfo.read_mountinfo()
            steps = {"make_plan (fastest of 3, ms)": plain(plan.make_plan, None, mounts=ms),
                     "read_mountinfo": plain(mountinfo.read_mountinfo),
                     "select (classify, levels)": plain(mountinfo.select, mounts, only=ms)}
            cands = mountinfo.select(mounts, only=ms).eligible
            steps["assign_levels alone"] = plain(mountinfo.assign_levels, cands)
            out[n] = {"steps_ms": steps,
                      "profile_make_plan": profiled(plan.make_plan, None, mounts=ms)}
            print("  %d filesystems: %s" % (n, steps), file=sys.stderr, flush=True)
        # the whole freeze at 16 (the library call): where its time goes
        ms = sc.mounts[:16]
        walls, prof = [], cProfile.Profile()
        for _ in range(5):
            t0 = time.perf_counter_ns()
            prof.enable()
            with freeze_filesystems(ms, timeout=60) as fz:
                window = fz.window_ms
            prof.disable()
            walls.append(round((time.perf_counter_ns() - t0) / 1e6, 2))
        out["freeze_16"] = {"wall_ms": walls, "last_window_ms": window, "top": top(prof, 15)}
        print("  freeze of 16: %s ms" % walls, file=sys.stderr, flush=True)
    return out


def child_table(entries: int) -> dict:
    from scale_mounts import Node, mount

    from vmsnap_native import cli, mountinfo, plan
    from vmsnap_native.devtools import loopfs
    base = tempfile.mkdtemp(prefix="vmsnap-scale-prof-")
    mount("scale-prof", base, "tmpfs", 0, "size=512m,mode=700")
    fs = loopfs.LoopFilesystems(base)
    try:
        node = Node(base, fs.make(4, size_mb=16))
        got = node.grow(entries)
        mounts = mountinfo.read_mountinfo()
        steps = {"make_plan": plain(plan.make_plan, None),
                 "read_mountinfo (read + parse)": plain(mountinfo.read_mountinfo),
                 "select (classify, levels)": plain(mountinfo.select, mounts)}
        devnull = open(os.devnull, "w")
        old, sys.stdout = sys.stdout, devnull
        try:
            steps["vmsnap mounts, in process"] = plain(cli.main, ["mounts"])
            prof = profiled(cli.main, ["mounts"])
        finally:
            sys.stdout = old
        print("  %d entries: %s" % (got, steps), file=sys.stderr, flush=True)
        return {"entries": got, "steps_ms": steps, "profile_mounts": prof}
    finally:
        subprocess.run(["umount", "-R", "-l", os.path.join(base, "pods")],
                       stderr=subprocess.DEVNULL)
        fs.teardown()
        subprocess.run(["umount", "-l", base], stderr=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", type=int, nargs="*", default=[16, 64, 128])
    ap.add_argument("--entries", type=int, default=10000)
    ap.add_argument("--child", choices=["fs", "table"])
    ap.add_argument("--out", default=os.path.join(HERE, "scale-profile.json"))
    a = ap.parse_args()
    if a.child:
        res = child_filesystems(a.counts) if a.child == "fs" else child_table(a.entries)
        json.dump(res, sys.stdout)
        return 0
    res = {"loadavg": [round(x, 2) for x in os.getloadavg()]}
    for kind in ("fs", "table"):
        # a private mount namespace with its own /run: the freeze's records and
        # lock are never seen outside
        p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            'mount -t tmpfs -o mode=755 scale-run /run && exec "$0" "$@"',
                            sys.executable, os.path.abspath(__file__), "--child", kind, "--entries",
                            str(a.entries), "--counts", *map(str, a.counts)],
                           stdout=subprocess.PIPE, text=True, timeout=900)
        if p.returncode != 0:
            print("profile %s failed (exit %d)" % (kind, p.returncode), file=sys.stderr)
            return 1
        res["filesystems" if kind == "fs" else "mount_table"] = json.loads(p.stdout)
    res["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    fz = res["filesystems"].pop("freeze_16")
    print("freeze of 16 filesystems, 5 rounds: %s ms" % fz["wall_ms"])
    for row in fz["top"][:10]:
        print("   ", row)
    res["freeze_16"] = fz
    for n, r in res["filesystems"].items():
        print("%s filesystems: %s" % (n, r["steps_ms"]))
        for row in r["profile_make_plan"]["top"][:6]:
            print("   ", row)
    t = res["mount_table"]
    print("%d entries: %s" % (t["entries"], t["steps_ms"]))
    for row in t["profile_mounts"]["top"][:8]:
        print("   ", row)
    print("%s written" % a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
