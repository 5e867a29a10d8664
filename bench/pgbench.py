"""What a database feels during a freeze (issue 13): a real PostgreSQL 15
on its own loop ext4 under `pgbench -c 4`, a streaming writer on a second
filesystem, two idle ones; all four frozen and thawed by each alternative
in turn while pgbench runs.  Per alternative: the worst and p99 latency of
the transactions overlapping the operation; pgbench must lose none.

The server listens on 127.0.0.1 only, on a private port and socket
directory, and is stopped (and its filesystems taken down) at the end.
"""

from __future__ import annotations

import ctypes
import glob
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time

from busy import STREAM, Stamps, alternatives
from common import Scratch

from vmsnap_native.devtools.stats import percentile, ratio, summary

PGBIN = "/usr/lib/postgresql/15/bin"
_LIBC = ctypes.CDLL(None, use_errno=True)
PORT = 55432
CLIENTS = 4
BASELINE = "util-linux fsfreeze"


def available() -> str | None:
    if not os.path.exists(os.path.join(PGBIN, "pg_ctl")):
        return "PostgreSQL 15 is not installed (%s)" % PGBIN
    try:
        import pwd
        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres user"
    return None


def as_postgres(*argv):
    p = subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True,
                       timeout=300)
    if p.returncode != 0:
        raise RuntimeError("%s failed: %s" % (os.path.basename(argv[0]), (p.stdout + p.stderr)[-2000:]))
    return p


class Server:
    def __init__(self, mountpoint: str, work: str):
        self.data = os.path.join(mountpoint, "pgdata")
        self.sock = os.path.join(work, "sock")
        os.chmod(os.path.dirname(mountpoint), 0o711)   # the scratch base: postgres traverses it
        os.makedirs(self.data)
        os.makedirs(self.sock)
        shutil.chown(self.data, "postgres", "postgres")
        shutil.chown(self.sock, "postgres", "postgres")
        shutil.chown(work, "postgres", "postgres")
        self.log = os.path.join(work, "server.log")
        as_postgres(os.path.join(PGBIN, "initdb"), "-D", self.data, "-U", "postgres",
                    "--auth=trust", "--no-sync")
        opts = "-c listen_addresses=127.0.0.1 -p %d -k %s -c fsync=on" % (PORT, self.sock)
        as_postgres(os.path.join(PGBIN, "pg_ctl"), "-D", self.data, "-l", self.log, "-o", opts,
                    "-w", "start")

    def pgbench(self, *args, **kw):
        return ["runuser", "-u", "postgres", "--", os.path.join(PGBIN, "pgbench"),
                "-h", self.sock, "-p", str(PORT), "-U", "postgres", *args]

    def stop(self):
        subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(PGBIN, "pg_ctl"), "-D",
                        self.data, "-m", "fast", "-w", "stop"], capture_output=True, timeout=120)


def flush_only(mounts):
    """Control: the flushes without any freeze (syncfs of every filesystem in
    parallel, twice, as presync + freeze do): what sharing the disk costs."""
    fds = [os.open(m, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) for m in mounts]
    try:
        for _ in range(2):
            ts = [threading.Thread(target=_LIBC.syncfs, args=(fd,)) for fd in fds]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
    finally:
        for fd in fds:
            os.close(fd)
    return {}


def read_log(prefix: str) -> list:
    """(end wall-clock s, latency s) of every transaction pgbench logged."""
    out = []
    for path in glob.glob(prefix + "*"):
        with open(path) as f:
            for line in f:
                p = line.split()
                # client_id transaction_no time script_no time_epoch time_us
                if len(p) >= 6 and p[2] != "skipped":
                    out.append((int(p[4]) + int(p[5]) / 1e6, int(p[2]) / 1e6))
    return out


def run(quick: bool = False, rounds: int | None = None, log=None) -> list:
    why = available()
    if why:
        return [{"skipped": why}]
    rounds = rounds or (2 if quick else 4)
    alts = alternatives()
    alts["control: flushes, no freeze"] = flush_only
    names = list(alts)
    work = tempfile.mkdtemp(prefix="vmsnap-pgbench-", dir="/dev/shm")
    with Scratch(4, size_mb=512) as sc:
        for m in sc.mounts:
            subprocess.run(["fsfreeze", "-f", m], check=True)
            subprocess.run(["fsfreeze", "-u", m], check=True)
        pg_fs, stream_fs = sc.mounts[0], sc.mounts[1]
        srv = Server(pg_fs, work)
        writer = None
        bench = None
        try:
            subprocess.run(srv.pgbench("-i", "-q", "-s", "10", "postgres"), check=True,
                           capture_output=True, timeout=300)
            writer = Stamps(STREAM, os.path.join(stream_fs, "stream"), "q")
            time.sleep(2.0)
            gap = 1.5
            seconds = int(rounds * len(names) * (gap + 2.5) + 10)
            prefix = os.path.join(work, "txlog")
            bench = subprocess.Popen(srv.pgbench("-c", str(CLIENTS), "-j", "2", "-T", str(seconds),
                                                 "--log", "--log-prefix=" + prefix, "postgres"),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     cwd=work)
            time.sleep(3.0)   # clients connected and steady
            spans = {k: [] for k in names}
            for r in range(rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for k in order:
                    t0 = time.time()
                    alts[k](sc.mounts)
                    spans[k].append((t0, time.time()))
                    time.sleep(gap)
                if log:
                    log("  pgbench: round %d/%d" % (r + 1, rounds))
            out, _ = bench.communicate(timeout=seconds + 120)
            bench = None
        finally:
            if bench is not None:
                bench.kill()
                bench.wait()
            if writer:
                writer.stop()
            srv.stop()
        txns = read_log(prefix)
    shutil.rmtree(work, ignore_errors=True)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    lost = int(failed.group(1)) if failed else None
    rows = []
    for k in names:
        worst, p99 = [], []
        for t0, t1 in spans[k]:
            lat = [lat for end, lat in txns if end >= t0 and end - lat <= t1]
            worst.append(max(lat) * 1e3 if lat else None)
            p99.append(percentile(lat, 99) * 1e3 if lat else None)
        rows.append({"benchmark": "pgbench -c %d, streaming writer on a neighbour fs" % CLIENTS,
                     "strategy": k, "rounds": rounds,
                     "worst_txn_median_ms": summary(worst)["median"],
                     "worst_txn_max_ms": summary(worst)["max"],
                     "p99_txn_median_ms": summary(p99)["median"],
                     "failed_transactions": lost,
                     "transactions": int(processed.group(1)) if processed else None,
                     "worst_ms": [round(w, 3) for w in worst if w is not None]})
    base = next(r for r in rows if r["strategy"] == BASELINE)["worst_txn_median_ms"]
    for r in rows:
        r["ratio_to_fsfreeze"] = ratio(r["worst_txn_median_ms"], base)
    return rows


if __name__ == "__main__":
    import json
    import sys
    for row in run(rounds=int(sys.argv[1]) if len(sys.argv) > 1 else 4,
                   log=lambda s: print(s, file=sys.stderr)):
        print(json.dumps(row))
