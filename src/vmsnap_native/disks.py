"""The one-disk rule: do all selected filesystems live on one top-level disk?

Each filesystem's device is followed through sysfs to the disk(s) under it:
a partition to its disk, device-mapper and md devices through their slaves,
and a btrfs filesystem through every device it spans (mountinfo names one).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable

TYPE_CHECKING = False   # true for type checkers; `typing` is not imported for it

if TYPE_CHECKING:
    from .mountinfo import Mount

Device = tuple[int, int]   # (major, minor)


def _sys_node(major: int, minor: int, sysfs: str) -> str | None:
    p = "%s/dev/block/%d:%d" % (sysfs, major, minor)
    return os.path.realpath(p) if os.path.exists(p) else None


def _dev_of(node: str) -> Device | None:
    try:
        with open(os.path.join(node, "dev")) as f:
            major, minor = f.read().strip().split(":")
        return int(major), int(minor)
    except (OSError, ValueError):
        return None


def top_disks(major: int, minor: int, sysfs: str = "/sys", _depth: int = 0) -> set[str]:
    node = _sys_node(major, minor, sysfs)
    if node is None or _depth > 16:
        return {"%d:%d" % (major, minor)}
    if os.path.exists(os.path.join(node, "partition")):
        node = os.path.dirname(node)
    slaves_dir = os.path.join(node, "slaves")
    slaves = sorted(os.listdir(slaves_dir)) if os.path.isdir(slaves_dir) else []
    if slaves:
        out: set[str] = set()
        for s in slaves:
            dev = _dev_of(os.path.realpath(os.path.join(slaves_dir, s)))
            if dev:
                out |= top_disks(dev[0], dev[1], sysfs, _depth + 1)
        if out:
            return out
    return {os.path.basename(node)}


def btrfs_filesystems(sysfs: str = "/sys") -> list[list[Device | None]]:
    """The devices of each btrfs filesystem, from /sys/fs/btrfs/FSID/devices/."""
    return [[_dev_of(os.path.realpath(os.path.join(devices_dir, name)))
             for name in sorted(os.listdir(devices_dir))]
            for devices_dir in sorted(glob.glob(os.path.join(sysfs, "fs", "btrfs", "*", "devices")))]


def btrfs_devices(device: Device, sysfs: str = "/sys",
                  filesystems: list[list[Device | None]] | None = None) -> list[Device]:
    """Every device of the btrfs filesystem that DEVICE (major, minor) belongs
    to (among FILESYSTEMS, default: read from sysfs); [DEVICE] when none lists it."""
    for members in btrfs_filesystems(sysfs) if filesystems is None else filesystems:
        if device in members:
            return [m for m in members if m is not None]
    return [device]


def mount_disks(mount: Mount, sysfs: str = "/sys",
                btrfs: list[list[Device | None]] | None = None) -> set[str]:
    major, minor = mount.major, mount.minor
    if major == 0 and mount.source.startswith("/dev/"):
        # btrfs and friends: an anonymous device number; the source names a device
        try:
            rdev = os.stat(mount.source).st_rdev
            major, minor = os.major(rdev), os.minor(rdev)
        except OSError:
            pass
    devices = [(major, minor)]
    if mount.fstype == "btrfs":
        devices = btrfs_devices((major, minor), sysfs, btrfs)   # one filesystem, several disks
    out: set[str] = set()
    for dev in devices:
        out |= top_disks(dev[0], dev[1], sysfs)
    return out


def disks_of(mounts: Iterable[Mount], sysfs: str = "/sys") -> set[str]:
    out: set[str] = set()
    btrfs: list[list[Device | None]] | None = None   # read once, not once per btrfs mount
    for m in mounts:
        if m.fstype == "btrfs" and btrfs is None:
            btrfs = btrfs_filesystems(sysfs)
        out |= mount_disks(m, sysfs, btrfs)
    return out


def single_disk(mounts: Iterable[Mount], sysfs: str = "/sys") -> bool:
    """True when every mount resolves to the same one disk."""
    return len(disks_of(mounts, sysfs)) == 1
