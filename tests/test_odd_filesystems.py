"""xfs, btrfs, nested loop filesystems, bind mounts, btrfs subvolumes, and
what is skipped: read-only mounts, tmpfs, overlay."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from .conftest import frozen_state, root_only
from .helpers import run_json, vmsnap

pytestmark = root_only

# A writer started inside the snapshot step; "blocked-N" once the kernel
# holds it (state D: asleep on the frozen filesystem's write barrier).
WRITER_BLOCKED = ("sh -c 'echo x > %s/probe' & w=$!; i=0; while [ $i -lt 100 ]; do "
                  "[ \"$(cut -d' ' -f3 /proc/$w/stat)\" = D ] && { echo blocked-%s; break; }; "
                  "sleep 0.05; i=$((i+1)); done")


def probe_all(mounts):
    return "; ".join(WRITER_BLOCKED % (m, i) for i, m in enumerate(mounts))


@pytest.mark.parametrize("fstype", ["xfs", "btrfs"])
def test_xfs_and_btrfs_freeze_and_thaw(tmp_path, loopfs, fstype):
    mounts = loopfs.make(2, fstype=fstype)
    rc, res, _ = run_json(tmp_path, tmp_path / "none", mounts,
                          snapshot=["sh", "-c", probe_all(mounts)])
    assert rc == 0, res
    assert {m["fstype"] for m in res["freeze"]["mounts"]} == {fstype}
    assert "blocked-0" in res["snapshot"]["output"] and "blocked-1" in res["snapshot"]["output"]
    assert not any(frozen_state(m) for m in mounts)


def test_nested_loop_filesystems_through_the_cli(tmp_path, loopfs):
    (outer,) = loopfs.make(1, size_mb=128)
    (middle,) = loopfs.make(1, size_mb=64, parent=outer)
    (inner,) = loopfs.make(1, parent=middle)
    p = vmsnap("mounts", "--json", "--mount", outer, "--mount", middle, "--mount", inner)
    levels = {c["mountpoint"]: c["level"] for c in json.loads(p.stdout)["eligible"]}
    assert levels[inner] < levels[middle] < levels[outer]
    rc, res, _ = run_json(tmp_path, tmp_path / "none", [outer, middle, inner],
                          snapshot=["sh", "-c", probe_all([inner, outer])], timeout=60)
    assert rc == 0 and "blocked-0" in res["snapshot"]["output"]
    assert not any(frozen_state(m) for m in (outer, middle, inner))


def test_bind_mount_is_one_filesystem(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    bind = os.path.join(loopfs.base, "bind")
    os.makedirs(bind)
    subprocess.run(["mount", "--bind", m, bind], check=True)
    try:
        rc, res, _ = run_json(tmp_path, tmp_path / "none", [m, bind])
        assert rc == 0 and len(res["freeze"]["mounts"]) == 1
        p = vmsnap("mounts", "--json", "--mount", m, "--mount", bind)
        skipped = {c["mountpoint"]: c["reason"] for c in json.loads(p.stdout)["skipped"]}
        assert "frozen once" in skipped[bind]
    finally:
        subprocess.run(["umount", bind])


def test_btrfs_subvolume_is_one_filesystem(tmp_path, loopfs):
    (m,) = loopfs.make(1, fstype="btrfs")
    subprocess.run(["btrfs", "-q", "subvolume", "create", os.path.join(m, "sub")], check=True)
    sub = os.path.join(loopfs.base, "sub")
    os.makedirs(sub)
    subprocess.run(["mount", "-o", "loop,subvol=sub", loopfs.image_of(m), sub], check=True)
    try:
        rc, res, _ = run_json(tmp_path, tmp_path / "none", [m, sub],
                              snapshot=["sh", "-c", probe_all([sub])])
        assert rc == 0 and len(res["freeze"]["mounts"]) == 1
        assert "blocked-0" in res["snapshot"]["output"]
    finally:
        subprocess.run(["umount", sub])
    assert not frozen_state(m)


def test_read_only_tmpfs_and_overlay_are_skipped_with_reasons(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    ro = os.path.join(loopfs.base, "ro")
    tmp = os.path.join(loopfs.base, "tmp")
    ovl = os.path.join(loopfs.base, "ovl")
    for d in (ro, tmp, ovl, os.path.join(m, "upper"), os.path.join(m, "work"), m + "/lower"):
        os.makedirs(d, exist_ok=True)
    subprocess.run(["mount", "-o", "bind,ro", m, ro], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", ro], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", tmp], check=True)
    r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        "lowerdir=%s/lower,upperdir=%s/upper,workdir=%s/work" % (m, m, m), ovl])
    try:
        p = vmsnap("mounts", "--json", "--mount", ro, "--mount", tmp, "--mount", ovl)
        d = json.loads(p.stdout)
        assert d["eligible"] == []
        reasons = {c["mountpoint"]: c["reason"] for c in d["skipped"]}
        assert "read-only" in reasons[ro]
        assert "pseudo" in reasons[tmp]
        if r.returncode == 0:
            assert "overlay" in reasons[ovl]
        rc, res, _ = run_json(tmp_path, tmp_path / "none", [tmp])
        assert rc == 0 and res["freeze"]["mounts"] == []
        assert any("not frozen" in w and "pseudo" in w for w in res["warnings"])
    finally:
        for d in (ovl, tmp, ro):
            subprocess.run(["umount", d], stderr=subprocess.DEVNULL)
