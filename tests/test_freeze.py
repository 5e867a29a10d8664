"""Freeze sessions on real loop filesystems: parallel freeze, the guardian,
deadlines, SIGKILL of the controller, foreign freezes, bind mounts, nesting,
crash records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import vmsnap_native as vmsnap
from vmsnap_native import freeze as freeze_mod

from .conftest import frozen_state, root_only

pytestmark = root_only


def start_writer(mountpoint, name="w"):
    """A child that writes one small file; it blocks while the fs is frozen."""
    return subprocess.Popen(["sh", "-c", "echo data > '%s/%s'" % (mountpoint, name)])


def wait_exit(proc, timeout):
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def test_parallel_freeze_blocks_writers_until_thaw(loopfs):
    mounts = loopfs.make(4)
    with vmsnap.freeze_filesystems(mounts, timeout=20) as s:
        assert s.all_frozen, [m.to_dict() for m in s.mounts]
        writers = [start_writer(m) for m in mounts]
        time.sleep(0.3)
        assert all(w.poll() is None for w in writers), "a write went through a frozen fs"
        # freezes overlapped in time: the parallel strategy, not one after another
        shared = s._shared
        starts = [shared.fs[i].freeze_start_ns for i in range(4)]
        ends = [shared.fs[i].freeze_end_ns for i in range(4)]
        assert max(starts) < max(ends)
    assert all(wait_exit(w, 5) for w in writers)
    assert all(w.returncode == 0 for w in writers)
    assert s.window_ms is not None and s.window_ms > 250
    assert s.thaw_reason == "requested" and not s.deadline_hit
    for m in s.mounts:
        assert m.state == "thawed" and m.frozen and m.freeze_ms is not None and m.thaw_ms is not None
        assert not frozen_state(m.mountpoint)


def test_presync_runs_before_the_freeze(loopfs):
    (mnt,) = loopfs.make(1)
    with vmsnap.freeze_filesystems([mnt], timeout=10, presync=True) as s:
        pass
    assert s.mounts[0].sync_ms is not None
    with vmsnap.freeze_filesystems([mnt], timeout=10, presync=False) as s2:
        pass
    assert s2.mounts[0].sync_ms is None


def test_deadline_thaws_on_time(loopfs):
    (mnt,) = loopfs.make(1)
    s = vmsnap.freeze_filesystems([mnt], timeout=0.5)
    t0 = time.monotonic()
    s.freeze()
    w = start_writer(mnt)
    assert wait_exit(w, 5), "still frozen long after the deadline"
    elapsed = time.monotonic() - t0
    assert 0.4 < elapsed < 1.5
    s.thaw()
    assert s.deadline_hit and s.thaw_reason == "deadline"
    assert not frozen_state(mnt)


FREEZER = textwrap.dedent("""
    import sys, time, vmsnap_native as v
    s = v.freeze_filesystems(sys.argv[1:], timeout=60)
    s.freeze()
    print("frozen", s.guardian_pid, flush=True)
    time.sleep(120)
""")


def test_sigkill_of_controller_thaws_within_100ms(loopfs):
    mounts = loopfs.make(2)
    ctl = subprocess.Popen([sys.executable, "-c", FREEZER, *mounts], stdout=subprocess.PIPE,
                           text=True)
    try:
        line = ctl.stdout.readline()
        assert line.startswith("frozen"), line
        assert all(frozen_state(m) for m in mounts)
        writers = [start_writer(m) for m in mounts]
        time.sleep(0.1)
        assert all(w.poll() is None for w in writers)
        t0 = time.monotonic()
        ctl.send_signal(signal.SIGKILL)
        for w in writers:
            assert wait_exit(w, 5)
        latency = time.monotonic() - t0
        assert latency < 0.1, "thawed %.1f ms after SIGKILL" % (latency * 1e3)
    finally:
        ctl.kill()
        ctl.wait()
    assert not any(frozen_state(m) for m in mounts)


def test_guardian_killed_controller_thaws(loopfs):
    (mnt,) = loopfs.make(1)
    s = vmsnap.freeze_filesystems([mnt], timeout=30)
    s.freeze()
    assert frozen_state(mnt)
    os.kill(s.guardian_pid, signal.SIGKILL)
    time.sleep(0.05)
    s.thaw()
    assert s.thaw_reason == "emergency"
    assert not frozen_state(mnt)


def test_guardian_signal_thaws(loopfs):
    (mnt,) = loopfs.make(1)
    s = vmsnap.freeze_filesystems([mnt], timeout=30)
    s.freeze()
    os.kill(s.guardian_pid, signal.SIGTERM)
    w = start_writer(mnt)
    assert wait_exit(w, 5)
    s.thaw()
    assert s.thaw_reason == "signal"


def test_already_frozen_is_reported_and_left_frozen(loopfs):
    a, b = loopfs.make(2)
    subprocess.run(["fsfreeze", "-f", a], check=True)
    try:
        with vmsnap.freeze_filesystems([a, b], timeout=10) as s:
            states = {m.mountpoint: m for m in s.mounts}
            assert states[a].state == "busy" and not states[a].frozen
            assert "EBUSY" in states[a].error
            assert states[b].frozen
            assert not s.all_frozen and [m.mountpoint for m in s.failures] == [a]
        assert frozen_state(a), "vmsnap thawed a freeze that was not its own"
        assert not frozen_state(b)
    finally:
        subprocess.run(["fsfreeze", "-u", a])


def test_bind_mount_frozen_once(loopfs):
    (mnt,) = loopfs.make(1)
    bind = mnt + "-bind"
    os.makedirs(bind)
    subprocess.run(["mount", "--bind", mnt, bind], check=True)
    try:
        with vmsnap.freeze_filesystems([mnt, bind], timeout=10) as s:
            assert len(s.mounts) == 1 and s.mounts[0].frozen
        assert s.mounts[0].state == "thawed"
    finally:
        subprocess.run(["umount", bind])


def test_unfreezable_filesystem_reported_not_raised(loopfs):
    (mnt,) = loopfs.make(1)
    tmp = os.path.join(loopfs.base, "tmpfs")
    os.makedirs(tmp)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", tmp], check=True)
    try:
        with vmsnap.freeze_filesystems([tmp, mnt], timeout=10) as s:
            by = {m.mountpoint: m for m in s.mounts}
            assert by[tmp].state == "failed" and "EOPNOTSUPP" in by[tmp].error
    finally:
        subprocess.run(["umount", tmp])
    assert not frozen_state(mnt)


def test_nested_loop_filesystem_freezes_inner_first(loopfs):
    (outer,) = loopfs.make(1, size_mb=96)
    (inner,) = loopfs.make(1, parent=outer)   # its image lives on the outer fs
    with vmsnap.freeze_filesystems([outer, inner], timeout=10) as s:
        by = {m.mountpoint: m for m in s.mounts}
        assert by[inner].level < by[outer].level
        assert s.all_frozen
        sh = s._shared
        idx = {os.fsdecode(bytes(s.targets[i].mount.mountpoint, "utf-8")): i
               for i in range(2)}
        assert sh.fs[idx[inner]].freeze_end_ns <= sh.fs[idx[outer]].freeze_start_ns
    sh_times = {m.mountpoint: m for m in s.mounts}
    assert all(m.state == "thawed" for m in sh_times.values())


def test_missing_mount_point_raises_with_path(loopfs):
    (mnt,) = loopfs.make(1)
    with pytest.raises(OSError) as ei:
        with vmsnap.freeze_filesystems([mnt, mnt + "/nope"], timeout=5):
            pass
    assert "nope" in str(ei.value)
    assert not frozen_state(mnt)


def test_record_exists_while_frozen_and_is_removed(loopfs):
    (mnt,) = loopfs.make(1)
    with vmsnap.freeze_filesystems([mnt], timeout=10) as s:
        assert os.path.exists(s.record_path)
        assert freeze_mod.active_records() == [s.record_path]
    assert not os.path.exists(s.record_path)


def test_thaw_recorded_after_both_processes_die(loopfs):
    mounts = loopfs.make(2)
    ctl = subprocess.Popen([sys.executable, "-c", FREEZER, *mounts], stdout=subprocess.PIPE,
                           text=True)
    line = ctl.stdout.readline()
    guardian = int(line.split()[1])
    # the guardian first, then the controller, leaving only the record
    os.kill(ctl.pid, signal.SIGSTOP)
    os.kill(guardian, signal.SIGKILL)
    ctl.kill()
    ctl.wait()
    time.sleep(0.05)
    assert all(frozen_state(m) for m in mounts)
    results = vmsnap.thaw_recorded()
    assert {r.mountpoint for r in results if r.outcome == "thawed"} == set(mounts)
    assert not any(frozen_state(m) for m in mounts)
    assert freeze_mod.active_records() == []
    assert vmsnap.thaw_recorded() == []


def test_detach_holds_until_thaw_recorded(loopfs):
    (mnt,) = loopfs.make(1)
    s = vmsnap.freeze_filesystems([mnt], timeout=30)
    s.freeze()
    s.detach()
    time.sleep(0.1)
    assert frozen_state(mnt)
    results = vmsnap.thaw_recorded()
    assert results and results[0].outcome == "thawed by its guardian"
    assert not frozen_state(mnt)


RCU = "/sys/kernel/rcu_expedited"


@pytest.mark.skipif(not os.path.exists(RCU), reason="kernel without rcu_expedited")
def test_rcu_expedited_only_for_the_freeze_and_restored(loopfs):
    (mnt,) = loopfs.make(1)
    before = open(RCU).read().strip()
    if before != "0":
        pytest.skip("rcu_expedited is already on here")
    with vmsnap.freeze_filesystems([mnt], timeout=10) as s:
        assert open(RCU).read().strip() == "0", "still expedited after the freeze waves"
    assert s.rcu_expedited is True
    with vmsnap.freeze_filesystems([mnt], timeout=10, expedite_rcu=False) as s2:
        pass
    assert s2.rcu_expedited is False
    assert open(RCU).read().strip() == "0"


@pytest.mark.skipif(not os.path.exists(RCU), reason="kernel without rcu_expedited")
def test_expedited_freeze_of_idle_filesystems_is_fast(loopfs):
    # an idle ext4 freeze is mostly RCU grace periods (~20 ms each); expedited,
    # well under that.  Generous bound: a loaded CI machine must not flake.
    mounts = loopfs.make(4)
    with vmsnap.freeze_filesystems(mounts, timeout=10):
        pass   # the first freeze of a fresh ext4 writes out what mkfs left
    windows = []
    for _ in range(5):
        time.sleep(0.1)   # long enough for the percpu rwsems to return to the fast path
        with vmsnap.freeze_filesystems(mounts, timeout=10) as s:
            pass
        windows.append(s.window_ms)
    assert sorted(windows)[2] < 15, windows
