"""Runs every comparison benchmark, prints the tables and the targets, and
writes bench/results.json.  As root:  python bench/run_all.py [--quick]"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import busy  # noqa: E402
import end_to_end  # noqa: E402
import freeze_window  # noqa: E402
import guardian  # noqa: E402
import pgbench  # noqa: E402
import plot  # noqa: E402
import supervision  # noqa: E402
from common import machine, table  # noqa: E402


def find(rows, **kw):
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return {}


def targets(res) -> list:
    fw, sup, gd, e2e = res["freeze_window"], res["supervision"], res["guardian"], res["end_to_end"]
    load4 = find(fw, filesystems=4, backing="disk", load="writers on half",
                 strategy="vmsnap parallel+presync")
    idle16 = find(fw, filesystems=16, backing="disk", load="idle",
                  strategy="vmsnap parallel+presync")
    idle16t = find(fw, filesystems=16, backing="tmpfs", load="idle",
                   strategy="vmsnap parallel+presync")
    spawn = find(sup, tool="vmsnap run_process")
    over = [r for r in sup if r["tool"].startswith("vmsnap") and "overshoot" in r["benchmark"]][0]
    out = []
    for n in (4, 16):
        st = find(res["busy"], filesystems=n, load="streaming", strategy="vmsnap jit")
        out.append(("worst write stall, %d fs, streaming writers on half, ratio to util-linux "
                    "one by one" % n, "<= 0.25", st.get("stall_ratio_to_fsfreeze"),
                    (st.get("stall_ratio_to_fsfreeze") or 9) <= 0.25))
        par = find(res["busy"], filesystems=n, load="streaming", strategy="vmsnap parallel")
        r = (st.get("op_median_ms") or 0) / (par.get("op_median_ms") or 1e-9)
        out.append(("whole operation, %d fs streaming, jit / before (parallel)" % n, "<= 2",
                    round(r, 3), r <= 2))
    pg = find(res["pgbench"], strategy="vmsnap jit")
    out.append(("pgbench worst transaction during a freeze, ratio to util-linux one by one",
                "<= 0.25", pg.get("ratio_to_fsfreeze"), (pg.get("ratio_to_fsfreeze") or 9) <= 0.25))
    out.append(("pgbench failed transactions", "0", pg.get("failed_transactions"),
                pg.get("failed_transactions") == 0))
    whole = res.get("pgbench_run", [])
    vr, az = find(whole, strategy=pgbench.VMSNAP_RUN), find(whole, strategy=pgbench.AZURE_FLOW)
    r = (vr.get("worst_txn_median_ms") or 9e9) / (az.get("worst_txn_median_ms") or 1e-9)
    out.append(("pgbench worst transaction during a whole run, vmsnap run / Azure-style flow",
                "< 1", round(r, 3) if vr and az else None, r < 1))
    lost = [w.get("failed_transactions") for w in (vr, az)] + \
        [w.get("failed_during_ops") for w in (vr, az)] + [w.get("aborted_clients") for w in (vr, az)]
    out.append(("pgbench failed transactions during the whole runs (both flows)", "0",
                sum(x or 0 for x in lost) if None not in lost else None,
                None not in lost and not any(lost)))
    out += [
        ("freeze window, 4 fs under load, ratio to util-linux sequential", "<= 0.5",
         load4.get("ratio_to_fsfreeze"), (load4.get("ratio_to_fsfreeze") or 9) <= 0.5),
        ("freeze window, 16 idle fs (images on disk), median ms", "<= 5",
         idle16.get("window_median_ms"), (idle16.get("window_median_ms") or 99) <= 5),
        ("freeze window, 16 idle fs (images on tmpfs: no flush cost), median ms", "<= 5",
         idle16t.get("window_median_ms"), (idle16t.get("window_median_ms") or 99) <= 5),
        ("spawn-and-wait, ratio to subprocess.run", "<= 0.5", spawn.get("ratio"),
         (spawn.get("ratio") or 9) <= 0.5),
        # max of N: too few rounds for a 99th percentile, so the figure says what it is
        ("timeout overshoot, max of %s rounds, ms (beyond deadline+grace)" % over.get("n"), "<= 5",
         over.get("max_ms"), (over.get("max_ms") or 99) <= 5),
        ("guardian thaw after SIGKILL, max of %s rounds, ms" % gd[0].get("n"), "<= 50",
         gd[0].get("max_ms"), (gd[0].get("max_ms") or 999) <= 50),
        ("vmsnap run end to end, median ms", "<= 150", e2e[0].get("median_ms"),
         (e2e[0].get("median_ms") or 999) <= 150),
    ]
    return [{"target": t, "goal": g, "measured": m, "met": ok} for t, g, m, ok in out]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer rounds (for a smoke run)")
    ap.add_argument("--out", default=os.path.join(HERE, "results.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/run_all.py needs root (it makes and freezes loop filesystems)", file=sys.stderr)
        return 1
    # vmsnap's records and lock on tmpfs, as /run is on most machines: here /run
    # is on the root disk, and a write there right before the freeze would make
    # the loop device's flush commit the host's journal inside every window
    rundir = tempfile.mkdtemp(prefix="vmsnap-bench-run-", dir="/dev/shm")
    os.environ["VMSNAP_RUNTIME_DIR"] = rundir
    t0 = time.time()
    res = {"machine": machine(), "quick": args.quick}
    res["machine"]["runtime_dir"] = "tmpfs (/dev/shm)"
    def log(line):
        print(line, file=sys.stderr, flush=True)
    for name, mod in (("busy", busy), ("pgbench", pgbench), ("freeze_window", freeze_window),
                      ("supervision", supervision), ("guardian", guardian),
                      ("end_to_end", end_to_end)):
        print("running %s ..." % name, file=sys.stderr, flush=True)
        if mod is pgbench:   # the whole-run rows come from the same server
            res["pgbench_run"] = []
            res[name] = mod.run(quick=args.quick, log=log, whole=res["pgbench_run"])
        else:
            res[name] = mod.run(quick=args.quick, log=log) if mod is busy else \
                mod.run(quick=args.quick)
    res["targets"] = targets(res)
    micro = os.path.join(os.path.dirname(args.out), "results-micro.json")
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    os.path.join(HERE, "test_micro.py"), "--benchmark-json", micro],
                   check=False, cwd=HERE)
    try:
        with open(micro) as f:
            res["micro"] = [{"name": b["name"], "median_us": round(b["stats"]["median"] * 1e6, 2)}
                            for b in json.load(f)["benchmarks"]]
    except (OSError, ValueError, KeyError):
        res["micro"] = []
    res["seconds"] = round(time.time() - t0, 1)
    shutil.rmtree(rundir, ignore_errors=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
    why = plot.draw(res, os.path.join(os.path.dirname(args.out), "busy.png"))
    m = res["machine"]
    print("\nmachine: %s cores (%s), kernel %s, root fs %s, %s; %s" % (
        m["cores"], m["cpu"], m["kernel"], m["root_fs"], m["date"], m["scratch"]))
    print(table("\nbusy filesystems: worst single write() of a 4 KiB/ms probe on the "
                "loaded ones (quiet: on the others), ms; light = 8 MiB rewriter, streaming = "
                "256 MiB rewriter, each on half the filesystems:", res["busy"],
                ["filesystems", "load", "strategy", "rounds", "stall_median_ms", "stall_max_ms",
                 "quiet_stall_median_ms", "op_median_ms", "blocked_median_ms",
                 "writers_lost_mb_median", "stall_ratio_to_fsfreeze"]))
    print(table("\nPostgreSQL 15 under pgbench -c 4 (its own fs; streaming writer on another):",
                res["pgbench"], ["strategy", "rounds", "worst_txn_median_ms", "worst_txn_max_ms",
                                 "p99_txn_median_ms", "failed_transactions", "ratio_to_fsfreeze"]))
    print(table("\nPostgreSQL 15 under pgbench -c 4 during a whole run (snapshot step: sleep 0.2, "
                "standing for a cloud API call): latencies of the transactions overlapping it:",
                res["pgbench_run"], ["strategy", "rounds", "worst_txn_median_ms", "worst_txn_max_ms",
                                     "p99_txn_median_ms", "txns_during_op_median",
                                     "failed_transactions", "op_median_ms", "window_median_ms"]))
    print(table("\nfreeze window (ms) and worst write stall seen by a 1 ms probe:", res["freeze_window"],
                ["filesystems", "backing", "load", "strategy", "window_min_ms", "window_median_ms", "window_p95_ms",
                 "stall_max_ms", "ratio_to_fsfreeze"]))
    print(table("\nprocess supervision:", res["supervision"],
                ["benchmark", "tool", "median_ms", "max_ms", "n", "ratio", "survivors"]))
    print(table("\nguardian:", res["guardian"], ["tool", "median_ms", "max_ms", "n", "thawed"]))
    print(table("\nend to end:", res["end_to_end"], ["benchmark", "median_ms", "p95_ms",
                                                     "window_median_ms"]))
    print(table("\nmicro-benchmarks:", res["micro"], ["name", "median_us"]))
    print(table("\ntargets:", res["targets"], ["target", "goal", "measured", "met"]))
    print("\n%s written in %.0f s; plot: %s" % (args.out, res["seconds"], why or "bench/busy.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
