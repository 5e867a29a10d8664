"""What a database feels with the gentle presync: bench/pgbench.py's set-up
(PostgreSQL 15 under `pgbench -c 4` on its own loop ext4, a streaming
writer on a second filesystem, two idle ones), and per alternative the
worst transaction overlapping the operation, the operation's time and the
presync's own flush.

The curve: a pre-script of PRE_SCRIPT_S seconds (a sleep, standing for the
application's quiesce) followed by vmsnap's freeze of all four, with the
gentle phase off or pacing its flushes every 1, 0.5, 0.25 or 0.1 s while
the pre-script runs.  Beside it, measured in the same rounds: no freeze at
all, the same flushes with no freeze, util-linux `fsfreeze` one by one, and
vmsnap's freeze with no pre-script.  Alternating, rounds in turn.

    python bench/pgbench_gentle.py [ROUNDS] [--direct-io] [--out FILE]

--direct-io: the loop devices write straight to the disk (losetup
--direct-io), as a virtual disk with no host cache does; by default they
write through the root filesystem's page cache, as pgbench.py does.
Writes a JSON document (rows, the load average at each round, the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pgbench as P
from busy import STREAM, Stamps, fsfreeze_one_by_one, no_freeze
from common import Scratch, machine

from vmsnap_native import gentle
from vmsnap_native.devtools.stats import percentile, summary
from vmsnap_native.freeze import FreezeSession

PRE_SCRIPT_S = 3.0
PACES = [None, 1.0, 0.5, 0.25, 0.1]   # None: the gentle phase off


def vmsnap_freeze(mounts, cap=64, saved=None):
    s = FreezeSession(mounts, timeout=30, schedule="jit", dirty_cap_mb=cap, dirty_saved=saved)
    with s:
        assert s.all_frozen, s.failures
    return {"presync_ms": max(m.sync_ms or 0 for m in s.mounts), "window_ms": s.window_ms}


def with_pre_script(pace):
    """The pre-script (a sleep) with the gentle phase pacing every PACE s
    (None: off), then vmsnap's freeze, as a run does."""
    def op(mounts):
        if pace is None:
            time.sleep(PRE_SCRIPT_S)
            return vmsnap_freeze(mounts)
        g = gentle.GentlePresync(mounts, start_mib=64, interval=pace).start()
        try:
            time.sleep(PRE_SCRIPT_S)
            g.stop()
            out = vmsnap_freeze(mounts, cap=g.cap_mib or 64, saved=g.saved())
        finally:
            g.close()
        out.update({"gentle_flushes": g.flushes, "gentle_max_flush_ms": g.summary()["max_flush_ms"]})
        return out
    return op


def name_of(pace):
    return "pre-script %gs + vmsnap, gentle %s" % (
        PRE_SCRIPT_S, "off" if pace is None else "every %g s" % pace)


def alternatives() -> dict:
    alts = {"no freeze": no_freeze,
            "control: flushes, no freeze": P.flush_only,
            "util-linux fsfreeze": fsfreeze_one_by_one,
            "vmsnap jit (no pre-script)": vmsnap_freeze}
    for pace in PACES:
        alts[name_of(pace)] = with_pre_script(pace)
    return alts


def direct_io(mounts):
    for m in mounts:
        dev = subprocess.run(["findmnt", "-n", "-o", "SOURCE", m], capture_output=True,
                             text=True, check=True).stdout.strip()
        subprocess.run(["losetup", "--direct-io=on", dev], check=True)


def run(rounds: int, dio: bool = False, log=None) -> dict:
    why = P.available()
    if why:
        return {"skipped": why}
    alts = alternatives()
    names = list(alts)
    work = tempfile.mkdtemp(prefix="vmsnap-pggentle-", dir="/dev/shm")
    spans = {k: [] for k in names}
    failed_ends: list = []   # pgbench is stopped, not left to print its summary: count its log
    loads = []
    with Scratch(4, size_mb=512) as sc:
        if dio:
            direct_io(sc.mounts)
        for m in sc.mounts:
            subprocess.run(["fsfreeze", "-f", m], check=True)
            subprocess.run(["fsfreeze", "-u", m], check=True)
        srv = P.Server(sc.mounts[0], work)
        writer = bench = None
        try:
            subprocess.run(srv.pgbench("-i", "-q", "-s", "10", "postgres"), check=True,
                           capture_output=True, timeout=300)
            writer = Stamps(STREAM, os.path.join(sc.mounts[1], "stream"), "q")
            time.sleep(2.0)
            gap = 1.5
            per_round = sum(gap + (PRE_SCRIPT_S + 1.5 if "pre-script" in k else 1.5)
                            for k in names)
            seconds = int(rounds * per_round * 1.5 + 20)
            prefix = os.path.join(work, "txlog")
            bench = subprocess.Popen(srv.pgbench("-c", str(P.CLIENTS), "-j", "2", "-T",
                                                 str(seconds), "--log",
                                                 "--log-prefix=" + prefix, "postgres"),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, cwd=work)
            time.sleep(3.0)
            t_end = time.time() + seconds - 5
            for r in range(rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for k in order:
                    if time.time() + PRE_SCRIPT_S + 3 > t_end:
                        break   # would outlast pgbench
                    t0 = time.time()
                    out = alts[k](sc.mounts) or {}
                    spans[k].append((t0, time.time(), out))
                    time.sleep(gap)
                loads.append(os.getloadavg())
                if log:
                    log("  pgbench gentle: round %d/%d, load %.1f" % (r + 1, rounds, loads[-1][0]))
            bench.terminate()   # the rounds are done: no need to wait out -T
            bench.communicate(timeout=120)
            bench = None
            txns = P.read_log(prefix, failed_ends)
        finally:
            if bench is not None:
                bench.kill()
                bench.wait()
            if writer:
                writer.stop()
            srv.stop()
    shutil.rmtree(work, ignore_errors=True)
    rows = []
    for k in names:
        worst, p99, ops, presync, flushes = [], [], [], [], []
        for t0, t1, res in spans[k]:
            lat = [lat for end, lat in txns if end >= t0 and end - lat <= t1]
            worst.append(max(lat) * 1e3 if lat else None)
            p99.append(percentile(lat, 99) * 1e3 if lat else None)
            ops.append((t1 - t0) * 1e3)
            presync.append(res.get("presync_ms"))
            flushes.append(res.get("gentle_max_flush_ms"))
        pace = next((p for p in PACES if name_of(p) == k), "-")
        rows.append({"strategy": k, "gentle_every_s": pace if pace != "-" else None,
                     "rounds": len(spans[k]),
                     "worst_txn_median_ms": summary(worst)["median"],
                     "worst_txn_max_ms": summary(worst)["max"],
                     "p99_txn_median_ms": summary(p99)["median"],
                     "op_median_ms": summary(ops)["median"],
                     "presync_median_ms": summary([x for x in presync if x is not None])["median"],
                     "gentle_max_flush_median_ms":
                         summary([x for x in flushes if x is not None])["median"],
                     "worst_ms": [round(w, 1) for w in worst if w is not None]})
    base = next(r for r in rows if r["strategy"] == "no freeze")["worst_txn_median_ms"]
    ctrl = next(r for r in rows if r["strategy"] == "control: flushes, no freeze")[
        "worst_txn_median_ms"]
    for r in rows:
        w = r["worst_txn_median_ms"]
        r["ratio_to_no_freeze"] = round(w / base, 2) if w and base else None
        r["ratio_to_flushes_no_freeze"] = round(w / ctrl, 2) if w and ctrl else None
    return {"benchmark": "pgbench -c %d, streaming writer on a neighbour fs, pre-script %g s"
                         % (P.CLIENTS, PRE_SCRIPT_S),
            "loop_direct_io": dio, "failed_transactions": len(failed_ends),
            "load_average_per_round": [[round(x, 2) for x in la] for la in loads],
            "machine": machine(), "rows": rows}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("rounds", nargs="?", type=int, default=4)
    ap.add_argument("--direct-io", action="store_true")
    ap.add_argument("--out")
    a = ap.parse_args()
    rundir = None
    if "VMSNAP_RUNTIME_DIR" not in os.environ:
        rundir = os.environ["VMSNAP_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="vmsnap-bench-run-",
                                                                     dir="/dev/shm")
    try:
        doc = run(a.rounds, a.direct_io, log=lambda s: print(s, file=sys.stderr))
    finally:
        if rundir:
            shutil.rmtree(rundir, ignore_errors=True)
    text = json.dumps(doc, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    for r in doc.get("rows", []):
        print(json.dumps({k: v for k, v in r.items() if k != "worst_ms"}))
