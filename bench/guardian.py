"""The guardian: time from SIGKILL of the process that froze to the last
filesystem thawed, seen by writers blocked on each filesystem.  And, for
contrast, a sequential freezer (the peers' way) killed the same way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from common import Scratch

from vmsnap_native.devtools.stats import summary

FREEZER = r"""
import sys, time, vmsnap_native as v
s = v.freeze_filesystems(sys.argv[1:], timeout=60)
s.freeze()
print("frozen", flush=True)
time.sleep(120)
"""

PEER = r"""
import os, sys, time, fcntl
fds = [os.open(m, os.O_RDONLY) for m in sys.argv[1:]]
for fd in fds:
    fcntl.ioctl(fd, 0xC0045877, 0)   # FIFREEZE, one after another; no guardian
print("frozen", flush=True)
time.sleep(120)
"""

WRITER = r"""
import os, sys, time
sys.stdout.write("ready\n"); sys.stdout.flush()
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
os.write(fd, b"x")
sys.stdout.write("%d\n" % time.monotonic_ns()); sys.stdout.flush()
"""


def one_round(mounts, script) -> float | None:
    ctl = subprocess.Popen([sys.executable, "-c", script, *mounts], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    assert ctl.stdout.readline().startswith("frozen")
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, os.path.join(m, "w")],
                                stdout=subprocess.PIPE, text=True) for m in mounts]
    for w in writers:
        assert w.stdout.readline().strip() == "ready"
    time.sleep(0.1)   # now blocked in write()
    t0 = time.monotonic_ns()
    ctl.send_signal(signal.SIGKILL)
    ctl.wait()
    done = []
    deadline = time.monotonic() + 1.0
    for w in writers:
        try:
            w.wait(timeout=max(0.0, deadline - time.monotonic()))
            done.append(int(w.stdout.readline()))
        except subprocess.TimeoutExpired:
            done.append(None)
    if None in done:
        for m in mounts:   # the peer never thaws: do it for it
            subprocess.run(["fsfreeze", "-u", m], stderr=subprocess.DEVNULL)
        for w in writers:
            w.wait()
        return None
    return (max(done) - t0) / 1e6


def run(quick: bool = False) -> list:
    rounds = 10 if quick else 40
    with Scratch(4) as sc:
        ours = [one_round(sc.mounts, FREEZER) for _ in range(rounds)]
        peer = [one_round(sc.mounts, PEER) for _ in range(3)]
    s = summary(ours)
    return [
        {"benchmark": "thaw after SIGKILL of the freezer (4 filesystems)", "tool": "vmsnap guardian",
         "median_ms": s["median"], "max_ms": s["max"], "n": s["n"],
         "thawed": "%d of %d" % (sum(x is not None for x in ours), rounds)},
        {"benchmark": "thaw after SIGKILL of the freezer (4 filesystems)",
         "tool": "sequential ioctl freezer (QEMU GA, open-vm-tools, Azure helper style)",
         "median_ms": None, "max_ms": None, "n": len(peer),
         "thawed": "%d of %d within 1 s (never, left to an operator)"
                   % (sum(x is not None for x in peer), len(peer))},
    ]
