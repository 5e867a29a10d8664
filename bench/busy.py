"""Busy filesystems: the worst single write() a probe sees blocked
while each alternative freezes and thaws N loop ext4 filesystems, half of
them with a streaming writer (rewriting a 256 MiB file in a loop, 1 MiB
pwrites, as `dd conv=notrunc` does), and what the writers lose.

Alternatives: util-linux `fsfreeze` one by one, a sequential ioctl loop,
vmsnap as before issue 13 (presync, then every level in parallel), and
vmsnap with its just-in-time schedule.  Alternating, same run; "no freeze"
rounds give the probe's own worst write over the same time.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import threading
import time

from common import Scratch

from vmsnap_native import freeze_filesystems
from vmsnap_native._core import core
from vmsnap_native.devtools.stats import ratio, summary

# Writes 4 KiB every ms; reports each write as (start, end) CLOCK_MONOTONIC ns.
PROBE = r"""
import os, struct, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)
out = sys.stdout.buffer
page = b"p" * 4096
n = 0
while True:
    t0 = time.monotonic_ns()
    os.pwrite(fd, page, (n % 4096) * 4096)
    t1 = time.monotonic_ns()
    out.write(struct.pack("qq", t0, t1)); out.flush()
    n += 1
    time.sleep(0.001)
"""

# Rewrites a 256 MiB file in 1 MiB writes forever; reports each 16 MiB done.
STREAM = r"""
import os, struct, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)
out = sys.stdout.buffer
block = b"s" * (1 << 20)
i = 0
while True:
    os.pwrite(fd, block, (i % 256) << 20)
    i += 1
    if i % 16 == 0:
        out.write(struct.pack("q", time.monotonic_ns())); out.flush()
"""


class Stamps:
    """A child process writing fixed-size records on stdout, read by a thread."""

    def __init__(self, code: str, path: str, fmt: str):
        self.fmt, self.size = fmt, struct.calcsize(fmt)
        self.rows = []
        self.proc = subprocess.Popen([sys.executable, "-c", code, path], stdout=subprocess.PIPE,
                                     start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        f = self.proc.stdout
        while True:
            b = f.read(self.size)
            if len(b) < self.size:
                return
            self.rows.append(struct.unpack(self.fmt, b))

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def worst_write_ms(probe: Stamps, t0: int, t1: int) -> float:
    """The longest single write() overlapping [t0, t1] (one still blocked counts to now)."""
    deadline = time.monotonic_ns() + int(2e9)
    while time.monotonic_ns() < deadline and (not probe.rows or probe.rows[-1][1] < t1):
        time.sleep(0.002)   # the write that ended the stall lands
    worst = 0
    for a, b in reversed(probe.rows):
        if b < t0:
            break
        if a <= t1:
            worst = max(worst, b - a)
    return round(worst / 1e6, 3)


def streamed_mb(writers, t0: int, t1: int) -> float:
    """MiB the streaming writers completed in [t0, t1] (16 MiB granules)."""
    return sum(16 * sum(1 for (t,) in w.rows if t0 <= t <= t1) for w in writers)


def fsfreeze_one_by_one(mounts):
    for m in mounts:
        subprocess.run(["fsfreeze", "-f", m], check=True)
    for m in reversed(mounts):
        subprocess.run(["fsfreeze", "-u", m], check=True)
    return {}


def ioctl_loop(mounts):
    _, lib = core()
    fds = [os.open(m, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) for m in mounts]
    try:
        for fd in fds:
            if lib.vmsnap_fifreeze(fd) != 0:
                raise OSError("freeze failed")
        for fd in reversed(fds):
            lib.vmsnap_fithaw(fd)
    finally:
        for fd in fds:
            os.close(fd)
    return {}


def vmsnap(mounts, **kw):
    s = freeze_filesystems(mounts, timeout=30, **kw)
    with s:
        assert s.all_frozen, s.failures
    return {"window_ms": s.window_ms,
            "blocked_ms": {m.mountpoint: m.blocked_ms for m in s.mounts}}


def no_freeze(mounts):
    time.sleep(1.0)   # about as long as the operations: the probe's own worst over it
    return {}


BASELINE = "util-linux fsfreeze"
# the "fresh" load: writers start this long before each operation (s)
FRESH_S = 1.5


def alternatives() -> dict:
    """name -> runner; the variants the schedule offers, each measured."""
    alts = {
        "no freeze": no_freeze,
        "util-linux fsfreeze": fsfreeze_one_by_one,
        "ioctl loop": ioctl_loop,
        "vmsnap parallel": lambda m: vmsnap(m, schedule="parallel", dirty_cap_mb=0),
        "vmsnap jit, no cap": lambda m: vmsnap(m, schedule="jit", dirty_cap_mb=0),
        "vmsnap jit": lambda m: vmsnap(m, schedule="jit"),
    }
    return alts


def direct_io(sc: Scratch) -> None:
    """Switches the loop devices under SC to direct I/O (no second page cache
    of the image on the host filesystem)."""
    for img in (img for _, img in sc.fs.mounts):
        for line in subprocess.run(["losetup", "-j", img], capture_output=True, text=True,
                                   check=True).stdout.splitlines():
            subprocess.run(["losetup", "--direct-io=on", line.split(":", 1)[0]], check=True)


def scenario(n: int, load: str, rounds: int, names=None, log=None, dio: bool = False) -> list:
    """LOAD: "streaming" (writers on half, probes on the loaded ones, in
    their steady state), "fresh" (the same writers, started FRESH_S before
    each operation and stopped after it, their dirty data written out
    before the next: the page cache still filling when the freeze comes),
    "light" (the old 8 MiB rewriter on half), "none" (probe only).  DIO:
    the loop devices do direct I/O."""
    alts = alternatives()
    names = names or list(alts)
    with Scratch(n, size_mb=512) as sc:
        if dio:
            direct_io(sc)
        for m in sc.mounts:   # the first freeze of a fresh ext4 writes out what mkfs left
            subprocess.run(["fsfreeze", "-f", m], check=True)
            subprocess.run(["fsfreeze", "-u", m], check=True)
        loaded = sc.mounts[: max(1, n // 2)]
        writers = []
        fresh = load == "fresh"
        if load in ("streaming", "light"):
            code = STREAM if load == "streaming" else STREAM.replace("% 256", "% 8")
            writers = [Stamps(code, os.path.join(m, "stream"), "q") for m in loaded]
        probes = [Stamps(PROBE, os.path.join(m, "probe"), "qq") for m in loaded]
        # the quiet ones' own probes: what a filesystem pays for its neighbours
        quiet = [Stamps(PROBE, os.path.join(m, "probe"), "qq") for m in sc.mounts[len(loaded):]]
        time.sleep(2.0)   # writers reach their steady state
        res = {k: {"stall": [], "quiet": [], "op": [], "window": [], "lost_mb": [], "blocked": []}
               for k in names}
        try:
            for r in range(rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for k in order:
                    if fresh:
                        writers = [Stamps(STREAM, os.path.join(m, "stream"), "q") for m in loaded]
                        time.sleep(FRESH_S)
                    t0 = time.monotonic_ns()
                    out = alts[k](sc.mounts)
                    t1 = time.monotonic_ns()
                    stall = max(worst_write_ms(p, t0, t1) for p in probes)
                    quiet_stall = max([worst_write_ms(p, t0, t1) for p in quiet] or [0])
                    time.sleep(0.7)
                    t2 = time.monotonic_ns()
                    # what the writers did from the start to 0.7 s after the end
                    written = (streamed_mb(writers, t0, t2), (t2 - t0) / 1e9)
                    e = res[k]
                    e["stall"].append(stall)
                    e["quiet"].append(quiet_stall)
                    e["op"].append((t1 - t0) / 1e6)
                    e["window"].append(out.get("window_ms"))
                    e["lost_mb"].append(written if writers else None)
                    e["blocked"].extend(out.get("blocked_ms", {}).values())
                    if fresh:   # the next alternative starts from a clean page cache
                        for w in writers:
                            w.stop()
                        writers = []
                        for m in loaded:
                            subprocess.run(["sync", "-f", m], check=True)
                if log:
                    log("  %d fs %s: round %d/%d" % (n, load, r + 1, rounds))
        finally:
            for p in probes + quiet + writers:
                p.stop()
    base = summary(res[BASELINE]["stall"])["median"] if BASELINE in res else None
    # the writers' loss: their no-freeze rate over the same span, minus what they wrote
    ref = [mb / s for mb, s in filter(None, res.get("no freeze", {}).get("lost_mb", []))]
    rate = summary(ref)["median"] if ref else None
    for e in res.values():
        e["lost_mb"] = [rate * s - mb if rate and w else None
                        for w in e["lost_mb"] for mb, s in [w or (0, 0)]]
    rows = []
    for k in names:
        e = res[k]
        st, op = summary(e["stall"]), summary(e["op"])
        rows.append({"filesystems": n, "load": load, "strategy": k, "rounds": rounds,
                     "loop": "direct I/O" if dio else "buffered",
                     "stall_median_ms": st["median"], "stall_max_ms": st["max"],
                     "quiet_stall_median_ms": summary(e["quiet"])["median"],
                     "op_median_ms": op["median"],
                     "window_median_ms": summary(e["window"])["median"],
                     "blocked_median_ms": summary(e["blocked"])["median"],
                     "blocked_max_ms": summary(e["blocked"])["max"],
                     "writers_mb_s_no_freeze": rate,
                     "writers_lost_mb_median": summary(e["lost_mb"])["median"],
                     "stall_ratio_to_fsfreeze": ratio(st["median"], base),
                     "stalls_ms": e["stall"], "ops_ms": e["op"]})
    return rows


def run(quick: bool = False, loads=("streaming", "light"), log=None) -> list:
    rows = []
    for n in (4, 16):
        for load in loads:
            rows += scenario(n, load, 3 if quick else 5, log=log)
    return rows


if __name__ == "__main__":
    import argparse
    import json
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=4)
    ap.add_argument("--load", default="streaming")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--dio", action="store_true", help="loop devices doing direct I/O")
    a = ap.parse_args()
    rows = scenario(a.n, a.load, a.rounds, a.only, log=lambda s: print(s, file=sys.stderr),
                    dio=a.dio)
    for r in rows:
        print(json.dumps({k: v for k, v in r.items() if k not in ("stalls_ms", "ops_ms")}))
