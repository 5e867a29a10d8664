"""Fixtures: loop filesystems this test suite makes (and always takes down).

Safety: tests freeze only filesystems created here, always by explicit
mount point.  Teardown thaws, unmounts and detaches even when a test fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from vmsnap_native import loopfs as loopfs_mod

IS_ROOT = os.geteuid() == 0
HAVE_LOOP = os.path.exists("/dev/loop-control") and shutil.which("losetup") is not None

root_only = pytest.mark.skipif(not (IS_ROOT and HAVE_LOOP),
                               reason="needs root and loop devices")

_RUNTIME_DIR = None


def pytest_configure(config):
    # keep the suite's crash records apart from a real /run/vmsnap
    global _RUNTIME_DIR
    if "VMSNAP_RUNTIME_DIR" not in os.environ:
        _RUNTIME_DIR = os.environ["VMSNAP_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="vmsnap-test-run-")


def pytest_unconfigure(config):
    if _RUNTIME_DIR:
        shutil.rmtree(_RUNTIME_DIR, ignore_errors=True)


def _pending_resumes(runtime: str) -> list:
    """PIDs of this suite's reapers whose controller died (parent not us) and
    of the resume commands they started: the resume takes the run lock."""
    mark = b"VMSNAP_RUNTIME_DIR=" + runtime.encode()
    out = []
    for d in os.listdir("/proc"):
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
            with open("/proc/%s/environ" % d, "rb") as f:
                env = f.read().split(b"\0")
            with open("/proc/%s/cmdline" % d, "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        if mark not in env or fields[0] in "ZX":
            continue
        if b"vmsnap_native._resume" in cmdline or (
                comm == "vmsnap-reaper" and int(fields[1]) != os.getpid()):
            out.append(int(d))
    return out


@pytest.fixture(autouse=True)
def _resumes_done_after_the_test():
    """A run SIGKILLed by a test leaves its resume command to its reaper, and
    the resume takes the run lock while it runs the post-script: the next
    test starts once that is over (at most 30 s), not with
    AnotherRunInProgress."""
    yield
    import time
    runtime = os.environ.get("VMSNAP_RUNTIME_DIR")
    end = time.monotonic() + 30
    while runtime and _pending_resumes(runtime) and time.monotonic() < end:
        time.sleep(0.05)


class LoopFilesystems(loopfs_mod.LoopFilesystems):
    """The package's helper; a missing mkfs skips the test."""

    def make(self, n=1, fstype="ext4", size_mb=None, parent=None):
        if shutil.which(loopfs_mod.MKFS[fstype][0]) is None:
            pytest.skip("%s is not installed" % loopfs_mod.MKFS[fstype][0])
        return super().make(n, fstype=fstype, size_mb=size_mb, parent=parent)


@pytest.fixture
def loopfs():
    if not (IS_ROOT and HAVE_LOOP):
        pytest.skip("needs root and loop devices")
    base = tempfile.mkdtemp(prefix="vmsnap-loop-")
    fs = LoopFilesystems(base)
    try:
        yield fs
    finally:
        fs.teardown()
        shutil.rmtree(base, ignore_errors=True)


def frozen_state(mountpoint: str) -> bool:
    """Asks the kernel directly: FIFREEZE on a frozen fs fails with EBUSY.
    (Only for tests' own filesystems; if it was not frozen we thaw it again.)"""
    import fcntl
    FIFREEZE, FITHAW = 0xC0045877, 0xC0045878
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.ioctl(fd, FIFREEZE, 0)
        except OSError as exc:
            import errno
            if exc.errno == errno.EBUSY:
                return True
            raise
        fcntl.ioctl(fd, FITHAW, 0)
        return False
    finally:
        os.close(fd)


def thawed_soon(mounts, timeout: float = 3.0) -> bool:
    """True once none of MOUNTS is frozen (polled: a freeze that was in
    progress when its controller died must return before it is thawed)."""
    import time
    end = time.monotonic() + timeout
    while True:
        if not any(frozen_state(m) for m in mounts):
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.01)


def live_in_group(pgid: int) -> list:
    """PIDs of live (non-zombie) processes in process group PGID."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[1].split()
        if int(rest[2]) == pgid and rest[0] not in "ZX":
            out.append(int(d))
    return out
