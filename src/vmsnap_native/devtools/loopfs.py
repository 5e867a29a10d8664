"""Loop-mounted scratch filesystems, for the demo, the benchmarks and the tests.

Only ever freezes what it made.  ``teardown()`` thaws, unmounts and detaches
everything, in reverse order, even after a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

MKFS = {
    # lazy init off: a fresh ext4 otherwise keeps writing in the background
    "ext4": ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"],
    "xfs": ["mkfs.xfs", "-q", "-f"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
}
MIN_SIZE_MB = {"ext4": 16, "xfs": 300, "btrfs": 128}


class LoopError(Exception):
    pass


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=120)
    if check and p.returncode != 0:
        raise LoopError("%s failed: %s" % (" ".join(argv), p.stdout.strip()))
    return p


def available(fstype: str = "ext4") -> str | None:
    """Why loop filesystems of FSTYPE cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (it makes and freezes loop filesystems): run it with sudo"
    if not os.path.exists("/dev/loop-control"):
        return "needs loop devices (/dev/loop-control is missing: modprobe loop)"
    for tool in (MKFS[fstype][0], "mount", "umount", "losetup"):
        if shutil.which(tool) is None:
            return "needs %s (install e2fsprogs, xfsprogs or btrfs-progs, util-linux)" % tool
    return None


class LoopFilesystems:
    """Makes loop-mounted filesystems under BASE and takes them down again."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.mounts: list[tuple[str, str]] = []   # (mountpoint, image), in the order made

    def make(self, n: int = 1, fstype: str = "ext4", size_mb: int | None = None,
             parent: str | None = None) -> list[str]:
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

    def image_of(self, mountpoint: str) -> str:
        return dict(self.mounts)[mountpoint]

    def attach(self, img: str, options: str = "loop") -> str:
        """Mounts an image (a snapshot copy, say) and registers it for teardown."""
        mnt = img + ".mnt"
        os.makedirs(mnt, exist_ok=True)
        _run("mount", "-o", options, img, mnt)
        self.mounts.append((mnt, img))
        return mnt

    def teardown(self) -> None:
        # thaw everything first: a frozen filesystem cannot be unmounted
        for mnt, _ in reversed(self.mounts):
            _run("fsfreeze", "-u", mnt, check=False)
        # everything mounted under base, the latest first: ours, and what a test
        # mounted there itself (a tmpfs, a bind, an overlay), whose own umount may
        # have met EBUSY while a process it froze through was still exiting
        for mnt in reversed(_mounts_under(self.base)):
            _umount(mnt)
        for mnt, img in reversed(self.mounts):
            _umount(mnt)   # one attached outside base; "not mounted" for the rest
            for line in _run("losetup", "-j", img, check=False).stdout.splitlines():
                _run("losetup", "-d", line.split(":", 1)[0], check=False)
        self.mounts = []


def _mounts_under(base: str) -> list[str]:
    """The mount points at or below BASE, in the order they were mounted."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if mnt == base or mnt.startswith(base.rstrip("/") + "/"):
                found.append(mnt)
    return found


def _umount(mnt: str) -> None:
    """Unmounts MNT, waiting up to 5 s for whoever still uses it, then lazily."""
    for _ in range(50):
        r = _run("umount", mnt, check=False)
        # not mounted (any more), or no longer there: one nested in a parent
        # unmounted before it ("no mount point specified") is gone with it
        if r.returncode == 0 or mnt not in _mounts_under(mnt):
            return
        time.sleep(0.1)
    _run("umount", "-l", mnt, check=False)
