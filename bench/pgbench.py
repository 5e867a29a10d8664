"""What a database feels during a freeze: a real PostgreSQL 15
on its own loop ext4 under `pgbench -c 4`, a streaming writer on a second
filesystem, two idle ones; all four frozen and thawed by each alternative
in turn while pgbench runs.  Per alternative: the worst and p99 latency of
the transactions overlapping the operation; pgbench must lose none.

Then the whole run (a second pgbench on the same server): a real `vmsnap run`
with the examples/postgresql scripts installed as a user would (root, 700,
in a root-only directory; the configuration 600) against an Azure-style
flow as Microsoft's VMBackup extension does it: the pre-script, its end seen
only at the next poll (ScriptsExecutionPollTimeSeconds, default 3 s), a
fixed 3 s before the freeze (SPEC §6), `fsfreeze` one filesystem after
another, the same snapshot step, thaw one by one, the post-script, polled
the same way.  The snapshot step is `sleep 0.2`, standing for a cloud API
call that starts the disk snapshots.

The server listens on 127.0.0.1 only, on a private port and socket
directory, and is stopped (and its filesystems taken down) at the end.
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import re
import shutil
import subprocess
import sys
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
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples", "postgresql")
SNAPSHOT_STEP = ["sleep", "0.2"]   # stands for the cloud API call that starts the snapshots
AZURE_POLL_S = 3.0          # ScriptsExecutionPollTimeSeconds' default
AZURE_FREEZE_DELAY_S = 3.0  # the fixed delay before the freeze (SPEC §6)
VMSNAP_RUN = "vmsnap run (examples/postgresql)"
VMSNAP_RUN_NOT_GENTLE = "vmsnap run (examples/postgresql), presyncGentle false"
AZURE_FLOW = "Azure-style flow"


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


def read_log(prefix: str, failed: list | None = None) -> list:
    """(end wall-clock s, latency s) of every transaction pgbench logged;
    the end times of the failed ones go to FAILED."""
    out = []
    for path in glob.glob(prefix + "*"):
        with open(path) as f:
            for line in f:
                p = line.split()
                # client_id transaction_no time script_no time_epoch time_us
                if len(p) < 6:
                    continue
                end = int(p[4]) + int(p[5]) / 1e6
                if p[2] == "failed":
                    if failed is not None:
                        failed.append(end)
                elif p[2] != "skipped":
                    out.append((end, int(p[2]) / 1e6))
    return out


class Installed:
    """The example scripts and a configuration as a user installs them: root,
    700 scripts in a root-only directory, the configuration 600, pointing at
    the benchmark's server."""

    def __init__(self, srv: Server, **fields):
        self.dir = tempfile.mkdtemp(prefix="vmsnap-pgrun-", dir="/dev/shm")   # root, 700
        self.pre = os.path.join(self.dir, "postgresql-pre.sh")
        self.post = os.path.join(self.dir, "postgresql-post.sh")
        for src, dst in (("pre.sh", self.pre), ("post.sh", self.post)):
            shutil.copyfile(os.path.join(EXAMPLES, src), dst)
            os.chmod(dst, 0o700)
        self.params = ["-h", srv.sock, "-p", str(PORT)]
        self.config = os.path.join(self.dir, "VMSnapshotScriptPluginConfig.json")
        doc = {"pluginName": "ScriptRunner",
               "preScriptLocation": self.pre, "postScriptLocation": self.post,
               "preScriptParams": self.params, "postScriptParams": self.params,
               "preScriptNoOfRetries": 0, "postScriptNoOfRetries": 0,
               "timeoutInSeconds": 60, "continueBackupOnFailure": False,
               "fsFreezeEnabled": True, "freezeTimeoutInSeconds": 30, **fields}
        fd = os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def vmsnap_run(inst: Installed, mounts) -> dict:
    """A real `vmsnap run` of the installed configuration, only on MOUNTS."""
    argv = [sys.executable, "-m", "vmsnap_native", "run", "--config", inst.config, "--json",
            "--log-file", "", "--metrics-file", ""]
    for m in mounts:
        argv += ["--mount", m]
    p = subprocess.run(argv + ["--"] + SNAPSHOT_STEP, capture_output=True, text=True, timeout=120)
    try:
        res = json.loads(p.stdout)
    except ValueError:
        raise RuntimeError("vmsnap run gave no result (exit %d): %s"
                           % (p.returncode, p.stderr[-2000:])) from None
    if p.returncode != 0 or res["status"] != "success":
        raise RuntimeError("vmsnap run: %s, %s" % (res["status"], res.get("errors")))
    return {"window_ms": res["freeze"]["window_ms"], "vmsnap_duration_ms": res["duration_ms"]}


def _polled(argv: list) -> None:
    """Runs ARGV and sees its end only at a poll, as the extension's PluginHost does."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while True:
            time.sleep(AZURE_POLL_S)
            if proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if proc.returncode != 0:
        raise RuntimeError("%s exited %d" % (argv[1], proc.returncode))


def azure_flow(inst: Installed, mounts) -> dict:
    """The extension's sequence: pre-script (polled), a fixed delay, freeze one
    by one, the snapshot step, thaw one by one, post-script (polled).  Scripts
    run with sh, as the extension runs them."""
    _polled(["sh", inst.pre, *inst.params])
    time.sleep(AZURE_FREEZE_DELAY_S)
    frozen = []
    t0 = time.monotonic()
    try:
        for m in mounts:
            subprocess.run(["fsfreeze", "-f", m], check=True, timeout=60)
            frozen.append(m)
        subprocess.run(SNAPSHOT_STEP, check=True, timeout=60)
    finally:
        for m in frozen:
            subprocess.run(["fsfreeze", "-u", m], check=False, timeout=60)
    window_ms = (time.monotonic() - t0) * 1e3
    _polled(["sh", inst.post, *inst.params])
    return {"window_ms": window_ms}


def whole_runs(srv: Server, mounts, work: str, rounds: int, log=None) -> list:
    """Pgbench over `vmsnap run` vs the Azure-style flow, alternating, ROUNDS each."""
    inst = Installed(srv)
    not_gentle = Installed(srv, presyncGentle=False)
    ops = {VMSNAP_RUN: vmsnap_run, AZURE_FLOW: azure_flow,
           VMSNAP_RUN_NOT_GENTLE: lambda _, mounts: vmsnap_run(not_gentle, mounts)}
    gap = 1.5
    # the Azure flow takes about 3 polls + the 3 s delay; vmsnap run a couple of seconds
    seconds = int(rounds * (14 + 5 + 5 + 3 * gap) + 5)
    prefix = os.path.join(work, "runlog")
    spans = {k: [] for k in ops}
    bench = subprocess.Popen(srv.pgbench("-c", str(CLIENTS), "-j", "2", "-T", str(seconds),
                                         "--log", "--log-prefix=" + prefix, "postgres"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=work)
    try:
        time.sleep(2.0)   # clients connected and steady
        end = time.time() + seconds - 2.0
        for r in range(rounds):
            for k in (list(ops) if r % 2 == 0 else list(ops)[::-1]):
                if time.time() + (14 if k == AZURE_FLOW else 5) > end:
                    continue   # would outlast pgbench
                t0 = time.time()
                out = ops[k](inst, mounts)
                spans[k].append((t0, time.time(), out))
                time.sleep(gap)
            if log:
                log("  pgbench whole run: round %d/%d" % (r + 1, rounds))
        out, _ = bench.communicate(timeout=seconds + 120)
        bench = None
    finally:
        if bench is not None:
            bench.kill()
            bench.wait()
        inst.close()
        not_gentle.close()
    failed_at = []
    txns = read_log(prefix, failed_at)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    aborted = len(re.findall(r"client \d+ aborted", out))
    rows = []
    for k in ops:
        worst, p99, count, tps, lost, op, window = [], [], [], [], [], [], []
        for t0, t1, res in spans[k]:
            lat = [lat for e, lat in txns if e >= t0 and e - lat <= t1]
            worst.append(max(lat) * 1e3 if lat else None)
            p99.append(percentile(lat, 99) * 1e3 if lat else None)
            done = sum(1 for e, _ in txns if t0 <= e <= t1)
            count.append(done)
            tps.append(done / (t1 - t0))
            lost.append(sum(1 for e in failed_at if t0 <= e <= t1))
            op.append((t1 - t0) * 1e3)
            window.append(res["window_ms"])
        rows.append({"benchmark": "pgbench -c %d during a whole run, streaming writer on a "
                                  "neighbour fs; snapshot step: %s" % (CLIENTS, " ".join(SNAPSHOT_STEP)),
                     "strategy": k, "rounds": len(spans[k]),
                     "worst_txn_median_ms": summary(worst)["median"],
                     "worst_txn_max_ms": summary(worst)["max"],
                     "p99_txn_median_ms": summary(p99)["median"],
                     "op_median_ms": summary(op)["median"],
                     "window_median_ms": summary(window)["median"],
                     "txns_during_op_median": summary(count)["median"],
                     "tps_during_op_median": summary(tps)["median"],
                     "failed_during_ops": sum(lost),
                     "failed_transactions": int(failed.group(1)) if failed else None,
                     "aborted_clients": aborted,
                     "transactions": int(processed.group(1)) if processed else None,
                     "worst_ms": [round(w, 3) for w in worst if w is not None],
                     "ops_ms": [round(o, 1) for o in op]})
    return rows


def run(quick: bool = False, rounds: int | None = None, log=None, whole: list | None = None) -> list:
    """The freeze alternatives' rows; the whole-run rows go to WHOLE if given."""
    why = available()
    if why:
        if whole is not None:
            whole.append({"skipped": why})
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
            txns = read_log(prefix)
            if whole is not None:
                try:
                    whole += whole_runs(srv, sc.mounts, work, 2 if quick else 3, log)
                except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                    whole.append({"strategy": "whole run", "error": str(e)})
        finally:
            if bench is not None:
                bench.kill()
                bench.wait()
            if writer:
                writer.stop()
            srv.stop()
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
    whole_rows = []
    # vmsnap run's records and lock on tmpfs, as run_all.py puts them
    rundir = None
    if "VMSNAP_RUNTIME_DIR" not in os.environ:
        rundir = os.environ["VMSNAP_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="vmsnap-bench-run-",
                                                                     dir="/dev/shm")
    try:
        rows = run(rounds=int(sys.argv[1]) if len(sys.argv) > 1 else 4,
                   log=lambda s: print(s, file=sys.stderr), whole=whole_rows)
    finally:
        if rundir:
            shutil.rmtree(rundir, ignore_errors=True)
    for row in rows + whole_rows:
        print(json.dumps(row))
