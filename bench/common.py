"""Shared pieces of the comparison benchmarks: scratch filesystems, write
load, the stall probe, and result tables."""

from __future__ import annotations

import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time

from vmsnap_native.devtools import loopfs

PROBE = r"""
import os, struct, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
out = sys.stdout.buffer
n = 0
while True:
    os.write(fd, b"x" * 64)
    out.write(struct.pack("q", time.monotonic_ns())); out.flush()
    n += 1
    if n % 4096 == 0:
        os.ftruncate(fd, 0)
    time.sleep(0.001)
"""

WRITER = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)
block = b"w" * (1 << 20)
i = 0
while True:
    os.pwrite(fd, block, (i % 8) << 20)
    i += 1
    time.sleep(0.002)
"""


class Scratch:
    """N loop ext4 filesystems under a temporary directory."""

    def __init__(self, n: int, size_mb: int = 48, under: str | None = None):
        why = loopfs.available("ext4")
        if why:
            raise SystemExit("benchmarks %s" % why)
        self.base = tempfile.mkdtemp(prefix="vmsnap-bench-", dir=under)
        self.fs = loopfs.LoopFilesystems(self.base)
        self.mounts = self.fs.make(n, size_mb=size_mb)

    def close(self):
        self.fs.teardown()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Load:
    """Writer processes dirtying pages on the given filesystems."""

    def __init__(self, mounts):
        self.procs = [subprocess.Popen([sys.executable, "-c", WRITER, os.path.join(m, "load")])
                      for m in mounts]
        time.sleep(0.5 if mounts else 0)

    def stop(self):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


class Probe:
    """Writes a small record every millisecond on MOUNTPOINT; the worst gap
    between two completed writes over an interval is the write stall."""

    def __init__(self, mountpoint: str):
        self.stamps = []
        self.proc = subprocess.Popen([sys.executable, "-c", PROBE, os.path.join(mountpoint, "probe")],
                                     stdout=subprocess.PIPE)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        time.sleep(0.2)

    def _read(self):
        f = self.proc.stdout
        while True:
            b = f.read(8)
            if len(b) < 8:
                return
            self.stamps.append(struct.unpack("q", b)[0])

    def worst_gap_ms(self, t0: int, t1: int):
        """The longest gap between completed writes that overlaps [t0, t1]."""
        time.sleep(0.01)   # let the write that ended the stall land
        st = self.stamps
        worst = 0
        for a, b in zip(st, st[1:]):
            if b >= t0 and a <= t1:
                worst = max(worst, b - a)
        return round(worst / 1e6, 3)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def machine() -> dict:
    fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "/"], capture_output=True,
                        text=True).stdout.strip()
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "python": platform.python_version(), "root_fs": fs,
            "scratch": "loop-mounted ext4 images on the root filesystem",
            "date": time.strftime("%Y-%m-%d")}


def table(title: str, rows, columns) -> str:
    lines = [title]
    widths = [max(len(str(c)), *(len(fmt(r.get(c))) for r in rows)) for c in columns]
    lines.append("  " + "  ".join(str(c).ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        lines.append("  " + "  ".join(fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))
    return "\n".join(lines)


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "%.3f" % v if abs(v) < 100 else "%.1f" % v
    return str(v)
