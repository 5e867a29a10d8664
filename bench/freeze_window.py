"""Freeze window on 1, 4 and 16 loop filesystems, idle and under write load,
for util-linux fsfreeze (one after another), a sequential ioctl loop (how
the QEMU guest agent, open-vm-tools and Azure's helper freeze), vmsnap
parallel, and vmsnap parallel with presync.  Alternating, same run.

Window = first freeze issued to last thaw returned (for fsfreeze: the first
`fsfreeze -f` started to the last `fsfreeze -u` exited, what a script using
it imposes).  Stall = the worst gap seen by a probe writing every 1 ms.
"""

from __future__ import annotations

import os
import subprocess
import time

from common import Load, Probe, Scratch

from vmsnap_native import freeze_filesystems
from vmsnap_native._core import core
from vmsnap_native.devtools.stats import ratio, summary

STRATEGIES = ["util-linux fsfreeze", "ioctl loop", "vmsnap parallel", "vmsnap parallel+presync",
              "vmsnap parallel+presync, RCU normal"]
BASELINE = "util-linux fsfreeze"


def fsfreeze_sequential(mounts):
    t0 = time.monotonic_ns()
    for m in mounts:
        subprocess.run(["fsfreeze", "-f", m], check=True)
    for m in reversed(mounts):
        subprocess.run(["fsfreeze", "-u", m], check=True)
    return (time.monotonic_ns() - t0) / 1e6, t0


def ioctl_loop(mounts):
    _, lib = core()
    fds = [os.open(m, os.O_RDONLY | os.O_DIRECTORY) for m in mounts]
    try:
        t0 = time.monotonic_ns()
        for fd in fds:
            if lib.vmsnap_fifreeze(fd) != 0:
                raise OSError("freeze failed")
        for fd in reversed(fds):
            lib.vmsnap_fithaw(fd)
        return (time.monotonic_ns() - t0) / 1e6, t0
    finally:
        for fd in fds:
            os.close(fd)


def vmsnap_parallel(mounts, presync, expedite=True):
    s = freeze_filesystems(mounts, timeout=30, presync=presync, expedite_rcu=expedite)
    with s:
        assert s.all_frozen, s.failures
    return s.window_ms, s.first_freeze_ns


RUNNERS = {
    "util-linux fsfreeze": fsfreeze_sequential,
    "ioctl loop": ioctl_loop,
    "vmsnap parallel": lambda m: vmsnap_parallel(m, False),
    "vmsnap parallel+presync": lambda m: vmsnap_parallel(m, True),
    # transparency: the same without expedited RCU grace periods
    "vmsnap parallel+presync, RCU normal": lambda m: vmsnap_parallel(m, True, expedite=False),
}


def scenario(n: int, loaded: bool, rounds: int, backing: str = "disk") -> list:
    # backing "disk": images on the root filesystem, so each freeze's flush
    # reaches the real disk; "tmpfs": images in /dev/shm, flushes cost nothing,
    # and the window is the freezing machinery alone
    with Scratch(n, under="/dev/shm" if backing == "tmpfs" else None) as sc:
        # warm up: the first freeze of a fresh ext4 writes out everything mkfs left
        for m in sc.mounts:
            subprocess.run(["fsfreeze", "-f", m], check=True)
            subprocess.run(["fsfreeze", "-u", m], check=True)
        # idle: nothing writes (a probe would dirty the filesystem and make every
        # freeze flush); under load: writers on half, the probe on a loaded one
        loaded_mounts = sc.mounts[: max(1, n // 2)] if loaded else []
        load = Load(loaded_mounts)
        probe = Probe(loaded_mounts[0]) if loaded else None
        windows = {k: [] for k in STRATEGIES}
        stalls = {k: [] for k in STRATEGIES}
        try:
            for r in range(rounds):
                order = STRATEGIES[r % len(STRATEGIES):] + STRATEGIES[:r % len(STRATEGIES)]
                for k in order:
                    window, t0 = RUNNERS[k](sc.mounts)
                    t1 = time.monotonic_ns()
                    windows[k].append(window)
                    stalls[k].append(probe.worst_gap_ms(t0, t1) if probe else None)
                    time.sleep(0.05)
        finally:
            if probe:
                probe.stop()
            load.stop()
    base = summary(windows[BASELINE])["median"]
    rows = []
    for k in STRATEGIES:
        w, s = summary(windows[k]), summary(stalls[k])
        rows.append({"filesystems": n, "backing": backing,
                     "load": "writers on half" if loaded else "idle",
                     "window_min_ms": w["min"],
                     "strategy": k, "window_median_ms": w["median"], "window_p95_ms": w.get("p95"),
                     "stall_max_ms": s["max"], "stall_median_ms": s["median"],
                     "ratio_to_fsfreeze": ratio(w["median"], base), "rounds": rounds})
    return rows


def run(quick: bool = False) -> list:
    rows = []
    for n in (1, 4, 16):
        for loaded in (False, True):
            rounds = (6 if loaded else 10) if quick else (10 if loaded else 25)
            rows += scenario(n, loaded, rounds)
    for n in (4, 16):
        rows += scenario(n, False, 10 if quick else 25, backing="tmpfs")
    return rows
