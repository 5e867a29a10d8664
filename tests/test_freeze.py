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
import types

import pytest

import vmsnap_native as vmsnap
from vmsnap_native import freeze as freeze_mod

from .conftest import frozen_state, root_only

pytestmark = root_only


def start_writer(mountpoint, name="w"):
    """A child that writes one small file; it blocks while the fs is frozen."""
    return subprocess.Popen(["sh", "-c", "echo data > '%s/%s'" % (mountpoint, name)])


def blocked_in_kernel(pid, timeout=5.0):
    """True once PID sleeps uninterruptibly (state D): a writer held by a
    frozen filesystem's write barrier, not merely slow to start."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open("/proc/%d/stat" % pid) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "D":
                    return True
        except OSError:
            return False
        time.sleep(0.01)
    return False


TIMED_WRITER = textwrap.dedent("""
    import sys, time
    with open(sys.argv[1], "w") as f:
        f.write("data")
    print(time.monotonic(), flush=True)
""")


def dirty(mounts, mb=16):
    """Unwritten data on each filesystem, so that its FIFREEZE takes a while."""
    for m in mounts:
        with open(os.path.join(m, "dirt"), "wb") as f:
            f.write(os.urandom(mb << 20))


def wait_exit(proc, timeout):
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


@pytest.mark.timing
def test_parallel_freeze_blocks_writers_until_thaw(loopfs):
    mounts = loopfs.make(4, size_mb=64)
    dirty(mounts)   # no presync: each FIFREEZE writes its data out, and takes a while
    with vmsnap.freeze_filesystems(mounts, timeout=20, presync=False) as s:
        assert s.all_frozen, [m.to_dict() for m in s.mounts]
        writers = [start_writer(m) for m in mounts]
        assert all(blocked_in_kernel(w.pid) for w in writers), "a writer was not held"
        time.sleep(0.3)   # held for a while: the window below covers it
        assert all(w.poll() is None for w in writers), "a write went through a frozen fs"
        # every freeze began before any ended: all four in flight at once,
        # not one after another
        shared = s._shared
        starts = [shared.fs[i].freeze_start_ns for i in range(4)]
        ends = [shared.fs[i].freeze_end_ns for i in range(4)]
        assert max(starts) < min(ends), (starts, ends)
    assert all(wait_exit(w, 5) for w in writers)
    assert all(w.returncode == 0 for w in writers)
    assert s.window_ms is not None and s.window_ms > 250
    assert s.thaw_reason == "requested" and not s.deadline_hit
    for m in s.mounts:
        assert m.state == "thawed" and m.frozen and m.freeze_ms is not None and m.thaw_ms is not None
        assert not frozen_state(m.mountpoint)


def test_presync_runs_before_the_freeze(loopfs):
    mounts = loopfs.make(2, size_mb=64)
    dirty(mounts, mb=8)
    with vmsnap.freeze_filesystems(mounts, timeout=10, presync=True) as s:
        fs = [s._shared.fs[i] for i in range(2)]
        # every syncfs ended before the first FIFREEZE began
        assert all(f.sync_start_ns > 0 for f in fs)
        assert max(f.sync_end_ns for f in fs) <= min(f.freeze_start_ns for f in fs)
    assert all(m.sync_ms is not None for m in s.mounts)
    with vmsnap.freeze_filesystems(mounts, timeout=10, presync=False) as s2:
        assert all(s2._shared.fs[i].sync_start_ns == 0 for i in range(2))
    assert all(m.sync_ms is None for m in s2.mounts)


@pytest.mark.timing
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


@pytest.mark.timing
def test_sigkill_of_controller_thaws_promptly(loopfs):
    # The README measures ~5 ms (bench/); here a generous bound: the writers
    # time their own completion (CLOCK_MONOTONIC is one clock for all processes)
    mounts = loopfs.make(2)
    ctl = subprocess.Popen([sys.executable, "-c", FREEZER, *mounts], stdout=subprocess.PIPE,
                           text=True)
    try:
        line = ctl.stdout.readline()
        assert line.startswith("frozen"), line
        assert all(frozen_state(m) for m in mounts)
        writers = [subprocess.Popen([sys.executable, "-c", TIMED_WRITER, os.path.join(m, "w")],
                                    stdout=subprocess.PIPE, text=True) for m in mounts]
        assert all(blocked_in_kernel(w.pid, timeout=10) for w in writers)
        t0 = time.monotonic()
        ctl.send_signal(signal.SIGKILL)
        done = [float(w.communicate(timeout=10)[0]) for w in writers]
        latency = max(done) - t0
        assert latency < 0.5, "thawed %.1f ms after SIGKILL" % (latency * 1e3)
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


def test_nested_loop_filesystem_freezes_inner_first_and_thaws_it_last(loopfs, monkeypatch):
    (outer,) = loopfs.make(1, size_mb=96)
    (inner,) = loopfs.make(1, parent=outer)   # its image lives on the outer fs
    times = {}
    finish = freeze_mod.FreezeSession._finish

    def keep_times(self):   # the shared states are released at the end of the session
        for i, m in enumerate(self.mounts):
            f = self._shared.fs[i]
            times[m.mountpoint] = dict(freeze_start_ns=f.freeze_start_ns,
                                       freeze_end_ns=f.freeze_end_ns,
                                       thaw_start_ns=f.thaw_start_ns, thaw_end_ns=f.thaw_end_ns)
        finish(self)

    monkeypatch.setattr(freeze_mod.FreezeSession, "_finish", keep_times)
    with vmsnap.freeze_filesystems([outer, inner], timeout=10) as s:
        by = {m.mountpoint: m for m in s.mounts}
        assert by[inner].level < by[outer].level
        assert s.all_frozen
    fs = {m: types.SimpleNamespace(**t) for m, t in times.items()}
    assert fs[inner].freeze_end_ns <= fs[outer].freeze_start_ns, "inner not frozen first"
    assert fs[outer].thaw_end_ns <= fs[inner].thaw_start_ns, "inner not thawed last"
    assert all(m.state == "thawed" for m in s.mounts)


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


@pytest.mark.ci_optional   # a kernel and container property, not the suite's
@pytest.mark.timing        # another freeze on the machine may flip the global switch
def test_rcu_expedited_only_for_the_freeze_and_restored(loopfs, rcu_off):
    (mnt,) = loopfs.make(1)
    with vmsnap.freeze_filesystems([mnt], timeout=10) as s:
        assert open(RCU).read().strip() == "0", "still expedited after the freeze waves"
    assert s.rcu_expedited is True
    with vmsnap.freeze_filesystems([mnt], timeout=10, expedite_rcu=False) as s2:
        pass
    assert s2.rcu_expedited is False
    assert open(RCU).read().strip() == "0"


@pytest.mark.ci_optional   # a kernel and container property, not the suite's
def test_expedited_freeze_of_idle_filesystems_is_fast(loopfs, rcu_off):
    # an idle ext4 freeze is mostly RCU grace periods (~20 ms each); expedited,
    # a fraction of that.  Compared with the same freeze not expedited,
    # interleaved, so that a loaded machine slows both alike.
    mounts = loopfs.make(4)
    with vmsnap.freeze_filesystems(mounts, timeout=10):
        pass   # the first freeze of a fresh ext4 writes out what mkfs left
    windows = {True: [], False: []}
    for _ in range(5):
        for expedite in (True, False):
            time.sleep(0.1)   # long enough for the percpu rwsems to return to the fast path
            with vmsnap.freeze_filesystems(mounts, timeout=10, expedite_rcu=expedite) as s:
                pass
            windows[expedite].append(s.window_ms)
    fast, slow = sorted(windows[True])[2], sorted(windows[False])[2]
    assert fast < slow / 2, windows
