"""Fixtures: loop filesystems this test suite makes (and always takes down).

Safety: tests freeze only filesystems created here, always by explicit
mount point.  Teardown thaws, unmounts and detaches even when a test fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

import pytest

IS_ROOT = os.geteuid() == 0
HAVE_LOOP = os.path.exists("/dev/loop-control") and shutil.which("losetup") is not None

root_only = pytest.mark.skipif(not (IS_ROOT and HAVE_LOOP),
                               reason="needs root and loop devices")

MKFS = {
    # lazy init off: a fresh ext4 otherwise keeps writing in the background
    "ext4": ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"],
    "xfs": ["mkfs.xfs", "-q", "-f"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
}
MIN_SIZE_MB = {"ext4": 16, "xfs": 300, "btrfs": 128}


def pytest_configure(config):
    # keep the suite's crash records apart from a real /run/vmsnap
    if "VMSNAP_RUNTIME_DIR" not in os.environ:
        os.environ["VMSNAP_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="vmsnap-test-run-")
    config.addinivalue_line("markers", "root: needs root and loop devices")


def _run(*argv, check=True):
    return subprocess.run(argv, check=check, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=120)


class LoopFilesystems:
    """Makes loop-mounted filesystems under a temporary directory."""

    def __init__(self, base):
        self.base = base
        self.mounts = []   # (mountpoint, image)

    def make(self, n=1, fstype="ext4", size_mb=None, parent=None):
        if shutil.which(MKFS[fstype][0]) is None:
            pytest.skip("%s is not installed" % MKFS[fstype][0])
        size_mb = max(size_mb or 0, MIN_SIZE_MB[fstype])
        out = []
        for _ in range(n):
            i = len(self.mounts)
            where = parent or self.base
            img = os.path.join(where, "fs%d.img" % i)
            mnt = os.path.join(where, "fs%d" % i)
            with open(img, "wb") as f:
                f.truncate(size_mb * 1024 * 1024)
            _run(*MKFS[fstype], img)
            os.makedirs(mnt, exist_ok=True)
            _run("mount", "-o", "loop", img, mnt)
            self.mounts.append((mnt, img))
            out.append(mnt)
        return out

    def image_of(self, mountpoint):
        return dict(self.mounts)[mountpoint]

    def attach(self, img, options="loop"):
        """Mounts an image (a snapshot copy) and registers it for teardown."""
        mnt = img + ".mnt"
        os.makedirs(mnt, exist_ok=True)
        _run("mount", "-o", options, img, mnt)
        self.mounts.append((mnt, img))
        return mnt

    def teardown(self):
        # thaw everything first (a frozen fs cannot be unmounted), innermost last made first
        for mnt, _ in reversed(self.mounts):
            _run("fsfreeze", "-u", mnt, check=False)
        for mnt, img in reversed(self.mounts):
            for _ in range(50):
                r = _run("umount", mnt, check=False)
                if r.returncode == 0 or "not mounted" in r.stdout:
                    break
                time.sleep(0.1)
            else:
                _run("umount", "-l", mnt, check=False)
            loops = _run("losetup", "-j", img, check=False).stdout
            for line in loops.splitlines():
                _run("losetup", "-d", line.split(":", 1)[0], check=False)


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


def is_frozen(mountpoint: str) -> bool:
    """True if writes to MOUNTPOINT block (probe: a write in a child, 0.3 s)."""
    probe = subprocess.Popen(["sh", "-c", "echo x > '%s/.probe' && rm -f '%s/.probe'"
                              % (mountpoint, mountpoint)])
    try:
        probe.wait(timeout=0.3)
        return False
    except subprocess.TimeoutExpired:
        # it will finish after the thaw; reap it then
        return True
    finally:
        if probe.poll() is None:
            import threading
            threading.Thread(target=probe.wait, daemon=True).start()


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
