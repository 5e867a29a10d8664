"""Process supervision: spawn-and-wait of /bin/true, and timeout overshoot
for a script whose grandchild ignores SIGTERM, vmsnap's run_process against
subprocess.run.  Alternating, same run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

from vmsnap_native import run_process
from vmsnap_native.devtools.stats import ratio, summary

# the child sleeps; its grandchild ignores SIGTERM and would live 2 s
STUBBORN = "sh -c \"trap '' TERM; sleep 2\" & sleep 30"
TIMEOUT = 0.1
GRACE = 0.02


def spawn_floor(rounds: int):
    """Median of a bare C posix_spawn+waitpid of /bin/true: what the child costs."""
    here = os.path.dirname(os.path.abspath(__file__))
    exe = os.path.join(tempfile.mkdtemp(prefix="vmsnap-floor-"), "spawn_floor")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    subprocess.run([cc, "-O2", "-o", exe, os.path.join(here, "spawn_floor.c")], check=True)
    try:
        return float(subprocess.run([exe, str(rounds)], capture_output=True, text=True,
                                    check=True).stdout)
    finally:
        shutil.rmtree(os.path.dirname(exe), ignore_errors=True)


def spawn_wait(rounds: int) -> list:
    ours, theirs = [], []
    for r in range(rounds):
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):
            t0 = time.perf_counter_ns()
            if which == 0:
                res = run_process(["/bin/true"], timeout=5)
                assert res.exit_code == 0
                ours.append((time.perf_counter_ns() - t0) / 1e6)
            else:
                subprocess.run(["/bin/true"], capture_output=True, timeout=5, check=True)
                theirs.append((time.perf_counter_ns() - t0) / 1e6)
    a, b = summary(ours), summary(theirs)
    floor = spawn_floor(rounds)
    return [
        {"benchmark": "spawn-and-wait /bin/true", "tool": "bare C posix_spawn+waitpid (the floor)",
         "median_ms": floor, "max_ms": None, "n": rounds, "ratio": ratio(floor, b["median"])},
        {"benchmark": "spawn-and-wait /bin/true", "tool": "vmsnap run_process",
         "median_ms": a["median"], "max_ms": a["max"], "n": a["n"], "ratio": ratio(a["median"], b["median"])},
        {"benchmark": "spawn-and-wait /bin/true", "tool": "subprocess.run(capture_output)",
         "median_ms": b["median"], "max_ms": b["max"], "n": b["n"], "ratio": 1.0},
    ]


def overshoot(rounds: int) -> list:
    ours, plain, captured = [], [], []
    survivors_plain = 0
    for r in range(rounds):
        # vmsnap: TERM+CONT to the group at the deadline, KILL after GRACE; done when all are gone
        t0 = time.monotonic_ns()
        res = run_process(["sh", "-c", STUBBORN], timeout=TIMEOUT, grace=GRACE)
        assert res.timed_out
        ours.append((time.monotonic_ns() - t0) / 1e6 - TIMEOUT * 1e3 - GRACE * 1e3)
        # subprocess.run without capture: returns soon, but only the child is killed
        t0 = time.monotonic_ns()
        try:
            subprocess.run(["sh", "-c", STUBBORN], timeout=TIMEOUT, start_new_session=True,
                           stderr=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            pass
        plain.append((time.monotonic_ns() - t0) / 1e6 - TIMEOUT * 1e3)
        time.sleep(0.05)
        found = False
        for pid in [int(d) for d in os.listdir("/proc") if d.isdigit()]:
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    if f.read() == b"sleep\x002\x00":
                        found = True
                        os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        survivors_plain += found
        if r < 3:   # each of these waits for the grandchild's 2 s
            t0 = time.monotonic_ns()
            try:
                subprocess.run(["sh", "-c", STUBBORN], timeout=TIMEOUT, capture_output=True)
            except subprocess.TimeoutExpired:
                pass
            captured.append((time.monotonic_ns() - t0) / 1e6 - TIMEOUT * 1e3)
    a, b, c = summary(ours), summary(plain), summary(captured)
    return [
        {"benchmark": "timeout overshoot (grandchild ignores SIGTERM)",
         "tool": "vmsnap run_process (beyond deadline+grace %d ms; whole group gone)" % (GRACE * 1e3),
         "median_ms": a["median"], "max_ms": a["max"], "n": a["n"], "survivors": 0},
        {"benchmark": "timeout overshoot (grandchild ignores SIGTERM)",
         "tool": "subprocess.run(timeout)", "median_ms": b["median"], "max_ms": b["max"], "n": b["n"],
         "survivors": "%d of %d rounds left the grandchild running" % (survivors_plain, rounds)},
        {"benchmark": "timeout overshoot (grandchild ignores SIGTERM)",
         "tool": "subprocess.run(timeout, capture_output)", "median_ms": c["median"],
         "max_ms": c["max"], "n": c["n"], "survivors": "blocks until the grandchild exits"},
    ]


def run(quick: bool = False) -> list:
    return spawn_wait(100 if quick else 300) + overshoot(20 if quick else 60)
