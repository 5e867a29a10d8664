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


# -- huge tables: discovery, classification and levels grow linearly ----------------

def synthetic_table(n: int, sysfs) -> str:
    """About N mountinfo lines as a busy node has them: per unit a volume on
    its own disk with another one nested in it, a pod (an overlay root, two
    tmpfs, bind mounts of volumes), now and then a read-only mount, a mount
    made over another at the same path, and a loop filesystem whose image
    lives on an earlier volume or on the previous loop filesystem (its
    backing file written under SYSFS, as the kernel shows it)."""
    lines = ["1 0 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw"]
    anon, loops, i = 100, 0, 0

    def add(dev, mountpoint, fstype, source, opts="rw,relatime", root="/"):
        lines.append("%d 1 %s %s %s %s shared:%d - %s %s rw"
                     % (len(lines) + 1, dev, root, mountpoint, opts, len(lines), fstype, source))

    while len(lines) < n:
        vol = "/vol/v%d" % i
        add("8:%d" % (2 * i), vol, "ext4", "/dev/sd%d" % i)
        add("253:%d" % i, vol + "/data/inner", "xfs", "/dev/mapper/in%d" % i)
        pod = "/var/lib/kubelet/pods/p%d" % i
        for sub, fstype in (("root", "overlay"), ("shm", "tmpfs"), ("secrets", "tmpfs")):
            anon += 1
            add("0:%d" % anon, "%s/%s" % (pod, sub), fstype, fstype)
        add("8:%d" % (2 * i), pod + "/volumes/a", "ext4", "/dev/sd%d" % i, root="/pv%d" % i)
        add("8:%d" % (2 * (i // 2)), pod + "/volumes/b", "ext4", "/dev/sd%d" % (i // 2))
        if i % 10 == 3:
            add("8:%d" % (2 * i + 1), vol + "/ro", "ext4", "/dev/ro%d" % i, opts="ro")
        if i % 10 == 7:   # mounted over: only the second one is reachable
            add("8:%d" % (2 * i + 1), vol + "/data/inner", "ext4", "/dev/over%d" % i)
        if i % 4 == 0:
            image = ("/mnt/loop%d/img" % (loops - 1) if loops % 3 == 2 else
                     "/vol/v%d/data/inner/images/%d.img" % (i // 2, loops))
            backing = sysfs / "dev" / "block" / ("7:%d" % loops) / "loop"
            backing.mkdir(parents=True)
            (backing / "backing_file").write_text(image + "\n")
            add("7:%d" % loops, "/mnt/loop%d" % loops, "ext4", "/dev/loop%d" % loops)
            loops += 1
        i += 1
    return "\n".join(lines) + "\n"


def slow_levels(cands, sysfs) -> None:
    """The levels the simple way: every pair of candidates asked whether one
    is below the other or holds its image, then relaxed to a fixed point."""
    def under(path, top):
        return path != "/" if top == "/" else path.startswith(top + "/")

    def holder(path):
        best = None
        for p in cands:
            mp = p.mount.mountpoint
            if (path == mp or under(path, mp)) and (best is None or len(mp) > len(best.mount.mountpoint)):
                best = p
        return best

    parents = {}
    for c in cands:
        backing = mountinfo._loop_backing_file(c.mount, str(sysfs))
        parents[id(c)] = [p for p in cands if p is not c and (
            under(c.mount.mountpoint, p.mount.mountpoint) or (backing and holder(backing) is p))]
        c.level = 0
    changed = True
    while changed:
        changed = False
        for c in cands:
            for p in parents[id(c)]:
                if p.level < c.level + 1:
                    p.level, changed = c.level + 1, True


def test_levels_of_a_large_table_equal_the_simple_way(tmp_path):
    mounts = mountinfo.parse_mountinfo(synthetic_table(1200, tmp_path))
    sel = mountinfo.select(mounts, sysfs=str(tmp_path))
    got = [(c.mount.mountpoint, c.level) for c in sel.eligible]
    cands = [mountinfo.Candidate(c.mount, True) for c in sel.eligible]
    slow_levels(cands, tmp_path)
    cands.sort(key=lambda c: (c.level, -c.mount.mountpoint.count("/"), c.mount.mountpoint))
    assert got == [(c.mount.mountpoint, c.level) for c in cands]
    levels = dict(got)
    # a loop filesystem's image on another one: a chain through the table
    assert levels["/mnt/loop1"] == levels["/mnt/loop2"] + 1
    assert levels["/vol/v0"] == levels["/vol/v0/data/inner"] + 1 >= levels["/mnt/loop0"] + 2
    assert levels["/"] == max(levels.values())


def test_a_table_of_10000_mounts_is_classified_in_time_that_grows_linearly(tmp_path):
    import gc
    import time

    def timed(text, sysfs) -> tuple:
        # the best of 5 CPU times, without the collector: what a shared machine adds
        # to a run only ever makes it slower
        runs = []
        gc.disable()
        try:
            for _ in range(5):
                t0 = time.process_time()
                sel = mountinfo.select(mountinfo.parse_mountinfo(text), sysfs=sysfs)
                runs.append(time.process_time() - t0)
        finally:
            gc.enable()
        return min(runs), sel

    (tmp_path / "half").mkdir()
    (tmp_path / "full").mkdir()
    half = synthetic_table(2500, tmp_path / "half")
    full = synthetic_table(10000, tmp_path / "full")
    t_half, _ = timed(half, str(tmp_path / "half"))
    t_full, sel = timed(full, str(tmp_path / "full"))
    reasons = [c.reason for c in sel.skipped]
    assert len(sel.eligible) + len(sel.skipped) == full.count("\n") >= 10000
    assert len(sel.eligible) > 1500   # thousands of filesystems to order, not a handful
    assert sum("pseudo" in r for r in reasons) > 2500
    assert sum("same filesystem as" in r for r in reasons) > 1500
    assert sum("hidden" in r for r in reasons) > 50 and sum("read-only" in r for r in reasons) > 50
    # four times the table: a linear pass takes four times as long, a quadratic one 16
    assert t_full / t_half < 8, "%.3f s at 2,500 mounts, %.3f s at 10,000" % (t_half, t_full)


@given(st.lists(st.sampled_from(["/", "", "/data", "/data/", "/d*", "/data/inner", "/x/",
                                 "/mnt/with space", "/[ab]oot*", "/srv/bind/", "?"]), max_size=4))
def test_plain_paths_and_globs_match_as_before(patterns):
    # the set lookup for plain paths matches exactly what trying each pattern matched
    match = mountinfo._matcher(patterns)
    for m in mountinfo.parse_mountinfo(LINES):
        assert match(m.mountpoint) == mountinfo._matches(m.mountpoint, patterns)


def test_many_named_mounts_on_a_large_table_are_selected_in_linear_time(tmp_path):
    import time
    mounts = mountinfo.parse_mountinfo(synthetic_table(10000, tmp_path))
    named = ["/vol/v%d" % i for i in range(0, 1000, 2)]

    def best(only) -> float:
        runs = []
        for _ in range(3):
            t0 = time.process_time()
            sel = mountinfo.select(mounts, only=only, sysfs=str(tmp_path))
            runs.append(time.process_time() - t0)
        assert sorted(c.mount.mountpoint for c in sel.eligible) == sorted(only)
        return min(runs)

    # 500 named mount points cost about what 5 do, not 100 times more
    few, many = best(named[:5]), best(named)
    assert many < 3 * few + 0.05, "%.3f s for 5 named mounts, %.3f s for 500" % (few, many)


def test_reading_some_mounts_by_id_gives_those_of_the_whole_table(tmp_path):
    # the freeze asks where a few fds are (its record, its targets): only their
    # lines are parsed, and each is the mount the whole parse would give
    text = synthetic_table(10000, tmp_path)
    table = tmp_path / "mountinfo"
    table.write_text(text)
    whole = mountinfo.read_mountinfo(str(table))
    wanted = {whole[0].mount_id, whole[5000].mount_id, whole[-1].mount_id, 1 << 30}
    got = mountinfo.read_mountinfo(str(table), ids=wanted)
    assert got == [m for m in whole if m.mount_id in wanted]
    assert len(got) == 3
