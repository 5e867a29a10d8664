"""Mount discovery: parsing real and crafted mountinfo lines, and the choice
of what to freeze."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmsnap_native import mountinfo

LINES = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 27 8:17 / /data rw,noatime shared:5 master:2 - xfs /dev/sdb1 rw,attr2
31 27 8:17 /sub /srv/bind rw - xfs /dev/sdb1 rw
32 27 0:45 / /mnt/with\\040space rw - ext4 /dev/sdc rw
33 27 0:46 / /tmp rw - tmpfs tmpfs rw
34 27 8:33 / /ro ro,relatime - ext4 /dev/sdc1 ro
35 27 0:50 / /net rw - nfs4 server:/export rw
36 27 0:51 / /fuse rw - fuse.sshfs user@host: rw
37 27 8:49 / /boot/efi rw - vfat /dev/sdd1 rw
38 30 8:65 / /data/inner rw - ext4 /dev/sde rw
"""


def test_parse_optional_fields_and_escapes():
    mounts = mountinfo.parse_mountinfo(LINES)
    data = mounts[2]
    assert data.optional == ("shared:5", "master:2")
    assert data.fstype == "xfs" and data.source == "/dev/sdb1" and data.device == "8:17"
    assert data.super_options == ("rw", "attr2")
    assert mounts[4].mountpoint == "/mnt/with space"
    assert mounts[0].optional == ()


def test_parse_rejects_malformed_line():
    with pytest.raises(ValueError, match="separator"):
        mountinfo.parse_line("1 2 3:4 / /x rw ext4 /dev/x rw")


def test_real_mountinfo_parses():
    mounts = mountinfo.read_mountinfo()
    assert any(m.mountpoint == "/" for m in mounts)


def test_selection_reasons_and_dedupe(monkeypatch):
    monkeypatch.setattr(mountinfo, "_block_backed", lambda m: m.major != 0 or m.fstype == "ext4")
    sel = mountinfo.select(mountinfo.parse_mountinfo(LINES), sysfs="/nonexistent")
    eligible = [c.mount.mountpoint for c in sel.eligible]
    reasons = {c.mount.mountpoint: c.reason for c in sel.skipped}
    assert "/proc" in reasons and "pseudo" in reasons["/proc"]
    assert "pseudo" in reasons["/tmp"]
    assert "read-only" in reasons["/ro"]
    assert "network" in reasons["/net"] and "network" in reasons["/fuse"]
    assert "does not support freezing" in reasons["/boot/efi"]
    assert reasons["/srv/bind"] == "same filesystem as /data (frozen once)"
    # children before parents: /data/inner is below /data, which is below /
    assert eligible.index("/data/inner") < eligible.index("/data") < eligible.index("/")
    levels = {c.mount.mountpoint: c.level for c in sel.eligible}
    assert levels["/data/inner"] == 0 and levels["/data"] == 1 and levels["/"] == 2


def test_only_and_skip(monkeypatch):
    monkeypatch.setattr(mountinfo, "_block_backed", lambda m: True)
    mounts = mountinfo.parse_mountinfo(LINES)
    sel = mountinfo.select(mounts, only=["/data", "/nowhere"], sysfs="/nonexistent")
    assert [c.mount.mountpoint for c in sel.eligible] == ["/data"]
    assert sel.missing == ["/nowhere"]
    sel = mountinfo.select(mounts, skip=["/data*", "/"], sysfs="/nonexistent")
    assert {c.mount.mountpoint for c in sel.eligible} == {"/mnt/with space"}


def test_hidden_mount():
    text = ("27 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
            "40 27 8:2 / /x rw - ext4 /dev/sda2 rw\n"
            "41 27 8:3 / /x rw - ext4 /dev/sda3 rw\n")
    sel = mountinfo.select(mountinfo.parse_mountinfo(text), sysfs="/nonexistent")
    assert [c.mount.device for c in sel.eligible if c.mount.mountpoint == "/x"] == ["8:3"]
    assert any("hidden" in c.reason for c in sel.skipped)


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40))
def test_escape_roundtrip(name):
    escaped = (name.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011")
               .replace("\n", "\\012"))
    assert mountinfo.unescape(escaped) == name
