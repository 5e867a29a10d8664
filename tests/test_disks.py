"""The one-disk rule (disks.py): it decides whether a run whose pre-script
failed with continueBackupOnFailure false still takes a snapshot.  Checked
through `vmsnap mounts --json` on real block devices: partitions of one
loop device, two loop devices, device-mapper where the kernel has it, and
a btrfs filesystem spanning two devices; and on a synthetic sysfs tree."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess

import pytest

from vmsnap_native import disks
from vmsnap_native.mountinfo import Mount

from .conftest import root_only
from .helpers import vmsnap

MiB = 1024 * 1024


def run(*argv):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=120)
    assert p.returncode == 0, "%s: %s" % (" ".join(argv), p.stdout)
    return p.stdout.strip()


def mbr(*partitions):
    """A DOS partition table: (first sector, sectors) per Linux partition."""
    table = bytearray(512)
    for i, (start, count) in enumerate(partitions):
        table[446 + 16 * i:446 + 16 * (i + 1)] = struct.pack(
            "<B3sB3sII", 0, b"\0\0\0", 0x83, b"\0\0\0", start, count)
    table[510:512] = b"\x55\xaa"
    return bytes(table)


class BlockDevices:
    """Loop devices, device-mapper tables and mounts a test made; all undone."""

    def __init__(self, base):
        self.base = base
        self.loops, self.dm, self.mounts = [], [], []

    def image(self, name, size_mb, head=b""):
        path = os.path.join(self.base, name)
        with open(path, "wb") as f:
            f.write(head)
            f.truncate(size_mb * MiB)
        return path

    def loop(self, image, partitions=False):
        dev = run("losetup", *(["-P"] if partitions else []), "-f", "--show", image)
        self.loops.append(dev)
        return dev

    def partition_node(self, loop, n):
        """/dev/loopNpK, made from sysfs where no udev makes it."""
        node = "%sp%d" % (loop, n)
        sys_dev = "/sys/class/block/%s/dev" % os.path.basename(node)
        if not os.path.exists(sys_dev) and shutil.which("partx"):
            # a kernel without the DOS table parser: partx reads it and tells the kernel
            subprocess.run(["partx", "-a", loop], capture_output=True)
        if not os.path.exists(sys_dev):
            pytest.skip("the kernel shows no partitions of %s (losetup -P, partx -a)" % loop)
        major, minor = map(int, open(sys_dev).read().split(":"))
        if not os.path.exists(node):
            os.mknod(node, 0o600 | 0o060000, os.makedev(major, minor))
        return node

    def mount(self, device, fstype="ext4", mkfs=True):
        if mkfs:
            run(*{"ext4": ["mkfs.ext4", "-q", "-F"], "btrfs": ["mkfs.btrfs", "-q", "-f"]}[fstype],
                device)
        mnt = os.path.join(self.base, "m%d" % len(self.mounts))
        os.makedirs(mnt)
        run("mount", device, mnt)
        self.mounts.append(mnt)
        return mnt

    def teardown(self):
        for mnt in reversed(self.mounts):
            subprocess.run(["umount", mnt])
        for name in reversed(self.dm):
            subprocess.run(["dmsetup", "remove", name])
        for dev in reversed(self.loops):
            subprocess.run(["losetup", "-d", dev])


@pytest.fixture
def block(loopfs):   # loopfs: root and loop devices, and a scratch directory
    b = BlockDevices(loopfs.base)
    try:
        yield b
    finally:
        b.teardown()


def disks_of_mounts(*mounts):
    args = ["mounts", "--json"]
    for m in mounts:
        args += ["--mount", m]
    p = vmsnap(*args)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert sorted(c["mountpoint"] for c in d["eligible"]) == sorted(mounts), d
    return d["one_disk"], d["disks"]


@root_only
def test_two_partitions_of_one_disk_are_one_disk(block):
    img = block.image("disk.img", 80, head=mbr((2048, 36 * 2048), (40 * 2048, 36 * 2048)))
    loop = block.loop(img, partitions=True)
    a = block.mount(block.partition_node(loop, 1))
    b = block.mount(block.partition_node(loop, 2))
    one, found = disks_of_mounts(a, b)
    assert one is True and found == [os.path.basename(loop)]


@root_only
def test_two_loop_devices_are_two_disks(loopfs):
    a, b = loopfs.make(2)
    one, found = disks_of_mounts(a, b)
    assert one is False and len(found) == 2
    one, found = disks_of_mounts(a)
    assert one is True and len(found) == 1


@root_only
def test_btrfs_over_two_devices_is_two_disks(block):
    if shutil.which("mkfs.btrfs") is None:
        pytest.skip("mkfs.btrfs is not installed")
    first = block.loop(block.image("b1.img", 160))
    second = block.loop(block.image("b2.img", 160))
    run("mkfs.btrfs", "-q", "-f", "-d", "single", "-m", "raid1", first, second)
    mnt = block.mount(first, fstype="btrfs", mkfs=False)
    one, found = disks_of_mounts(mnt)
    assert one is False, "a btrfs filesystem over two disks counted as one disk"
    assert sorted(found) == sorted(os.path.basename(d) for d in (first, second))


def dm_available():
    if shutil.which("dmsetup") is None:
        return "dmsetup is not installed"
    if subprocess.run(["dmsetup", "version"], capture_output=True).returncode != 0:
        return "no device-mapper in this kernel (dmsetup version fails)"
    return None


@root_only
@pytest.mark.ci_optional   # device-mapper is a kernel feature, not the suite's
def test_device_mapper_resolves_to_the_disks_under_it(block):
    why = dm_available()
    if why:
        pytest.skip(why)
    first = block.loop(block.image("d1.img", 40))
    second = block.loop(block.image("d2.img", 40))
    half, whole = 20 * MiB // 512, 40 * MiB // 512
    # one linear device over the first half of the first disk; one concatenating the
    # second half of the first disk and the whole second disk
    run("dmsetup", "create", "vmsnap-test-one", "--table", "0 %d linear %s 0" % (half, first))
    block.dm.append("vmsnap-test-one")
    run("dmsetup", "create", "vmsnap-test-two", "--table",
        "0 %d linear %s %d\n%d %d linear %s 0" % (half, first, half, half, whole, second))
    block.dm.append("vmsnap-test-two")
    one_mnt = block.mount("/dev/mapper/vmsnap-test-one")
    two_mnt = block.mount("/dev/mapper/vmsnap-test-two")
    one, found = disks_of_mounts(one_mnt)
    assert one is True and found == [os.path.basename(first)]
    one, found = disks_of_mounts(two_mnt)
    assert one is False and sorted(found) == sorted(os.path.basename(d) for d in (first, second))
    one, found = disks_of_mounts(one_mnt, two_mnt)
    assert one is False and sorted(found) == sorted(os.path.basename(d) for d in (first, second))


# -- the same rules on a synthetic sysfs tree (no root needed) -----------------------

def fake_block(sysfs, name, dev, parent=None, slaves=(), partition=False):
    """sysfs/devices/.../NAME with its dev file, and sysfs/dev/block/DEV."""
    base = os.path.join(sysfs, "devices", "virtual", "block")
    node = os.path.join(base, parent, name) if parent else os.path.join(base, name)
    os.makedirs(os.path.join(node, "slaves"), exist_ok=True)
    with open(os.path.join(node, "dev"), "w") as f:
        f.write("%d:%d\n" % dev)
    if partition:
        open(os.path.join(node, "partition"), "w").close()
    for s in slaves:
        os.symlink(os.path.join(base, s), os.path.join(node, "slaves", s))
    os.makedirs(os.path.join(sysfs, "dev", "block"), exist_ok=True)
    os.symlink(node, os.path.join(sysfs, "dev", "block", "%d:%d" % dev))
    return node


def mount_on(dev, fstype="ext4", source="/dev/x"):
    return Mount(1, 0, dev[0], dev[1], "/", "/m%d" % dev[1], ("rw",), (), fstype, source, ())


def test_synthetic_partitions_md_and_dm(tmp_path):
    sysfs = str(tmp_path)
    fake_block(sysfs, "sda", (8, 0))
    fake_block(sysfs, "sda1", (8, 1), parent="sda", partition=True)
    fake_block(sysfs, "sda2", (8, 2), parent="sda", partition=True)
    fake_block(sysfs, "sdb", (8, 16))
    fake_block(sysfs, "md0", (9, 0), slaves=["sda", "sdb"])      # raid over two disks
    fake_block(sysfs, "dm-0", (253, 0), slaves=["sda"])          # LVM on one disk
    fake_block(sysfs, "dm-1", (253, 1), slaves=["md0"])          # LVM on the raid
    assert disks.single_disk([mount_on((8, 1)), mount_on((8, 2))], sysfs)
    assert disks.disks_of([mount_on((8, 1)), mount_on((253, 0))], sysfs) == {"sda"}
    assert not disks.single_disk([mount_on((8, 1)), mount_on((8, 16))], sysfs)
    assert disks.disks_of([mount_on((9, 0))], sysfs) == {"sda", "sdb"}
    assert disks.disks_of([mount_on((253, 1))], sysfs) == {"sda", "sdb"}
    assert disks.disks_of([mount_on((8, 99))], sysfs) == {"8:99"}   # unknown: itself


def test_synthetic_btrfs_spanning_two_disks(tmp_path):
    sysfs = str(tmp_path)
    sda = fake_block(sysfs, "sda", (8, 0))
    sdb = fake_block(sysfs, "sdb", (8, 16))
    members = tmp_path / "fs" / "btrfs" / "0f-uuid" / "devices"
    members.mkdir(parents=True)
    os.symlink(sda, members / "sda")
    os.symlink(sdb, members / "sdb")
    assert disks.disks_of([mount_on((8, 0), fstype="btrfs")], sysfs) == {"sda", "sdb"}
    # an ext4 on the same device number is not looked up as btrfs
    assert disks.disks_of([mount_on((8, 0))], sysfs) == {"sda"}
