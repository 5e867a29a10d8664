"""Every way a freeze is undone from saved state (issue 11: 1, 4-7): the
record after the guardian's death (nested filesystems: parents first), the
controller's emergency thaw through its own fds, `vmsnap thaw` against a
live run, the early-thaw check, the presync bound, rcu_expedited after a
death mid-wave, records on a frozen btrfs, and which records are trusted.

Nested filesystems: the inner one's image lives on the outer one.  Thawing
the inner first blocks on the frozen outer (its superblock write goes to a
file there), so every clean-up here thaws the outer first.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import vmsnap_native as vmsnap
from vmsnap_native import freeze as freeze_mod
from vmsnap_native.errors import BusyError, FreezeError

from .conftest import frozen_state, root_only, thawed_soon

pytestmark = root_only

RCU = "/sys/kernel/rcu_expedited"


def fsfreeze(flag, mountpoint):
    return subprocess.run(["fsfreeze", flag, mountpoint], capture_output=True, timeout=60)


@pytest.fixture
def nested(loopfs):
    """(outer, inner): inner's image is a file on outer.  Thawed parent first."""
    (outer,) = loopfs.make(1, size_mb=96)
    (inner,) = loopfs.make(1, parent=outer)
    try:
        yield outer, inner
    finally:
        fsfreeze("-u", outer)
        fsfreeze("-u", inner)


def proc_state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "X"


@contextlib.contextmanager
def flush_stuck_behind(outer, inner, mb=8):
    """Freezes OUTER and leaves INNER (whose image is a file on OUTER) with a
    flush that cannot end until OUTER thaws: a writer's fsync into INNER is
    stuck in the loop device's write to OUTER.  Dirty pages alone would not
    do: anyone's sync(1) on a busy machine can write them out before OUTER
    freezes, and then INNER freezes at once.  OUTER is thawed (and the writer
    reaped) on the way out, unless the test did it first."""
    assert fsfreeze("-f", outer).returncode == 0
    writer = subprocess.Popen(["dd", "if=/dev/zero", "of=" + os.path.join(inner, "dirty"),
                               "bs=1M", "count=%d" % mb, "conv=fsync", "status=none"])
    try:
        # D: in its fsync (or throttled), waiting for the loop device's write into OUTER
        assert wait_for(lambda: proc_state(writer.pid) == "D", timeout=20), \
            "the writer into %s never waited on the frozen %s" % (inner, outer)
        yield writer
    finally:
        fsfreeze("-u", outer)
        writer.wait(60)


def gone(pid, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open("/proc/%d/stat" % pid) as f:
                if f.read().rsplit(")", 1)[1].split()[0] in "ZX":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.01)
    return False


def vmsnap_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "vmsnap_native", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


# `vmsnap freeze` as a library call: freeze, hand over to the guardian, exit
DETACHED_FREEZER = textwrap.dedent("""
    import sys, vmsnap_native as v
    s = v.freeze_filesystems(sys.argv[1:], timeout=120)
    s.freeze()
    assert s.all_frozen, [m.to_dict() for m in s.mounts]
    s.detach()
    print(s.guardian_pid, flush=True)
""")

# a run in progress: frozen, not detached, waits for a byte on stdin, then
# prints what the early-thaw check says and thaws
LIVE_RUN = textwrap.dedent("""
    import sys, vmsnap_native as v
    s = v.freeze_filesystems(sys.argv[1:], timeout=60)
    s.freeze()
    print("frozen", s.guardian_pid, flush=True)
    sys.stdin.read(1)
    print("early:", s.thawed_early(), flush=True)
    s.thaw()
""")


def test_vmsnap_thaw_after_guardian_death_thaws_nested_parent_first(nested):
    outer, inner = nested
    p = subprocess.run([sys.executable, "-c", DETACHED_FREEZER, outer, inner],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    guardian = int(p.stdout.split()[0])
    os.kill(guardian, signal.SIGKILL)
    assert gone(guardian)
    assert frozen_state(outer)   # (the inner is probed only once the outer is thawed)
    thaw = subprocess.Popen([sys.executable, "-m", "vmsnap_native", "thaw"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, errs = thaw.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        fsfreeze("-u", outer)   # lets a child-first thaw finish
        thaw.communicate(timeout=60)
        pytest.fail("`vmsnap thaw` hung on nested filesystems: it thawed the child first")
    assert thaw.returncode == 0, errs
    assert "%s: thawed" % outer in errs and "%s: thawed" % inner in errs, errs
    assert not frozen_state(outer) and not frozen_state(inner)
    assert freeze_mod.active_records() == [] and vmsnap.thaw_recorded() == []


# the controller closes 0, 1, 2 first: its mount fds get those numbers, which
# the guardian's detach must move (fd numbers are per process)
RENUMBERED = textwrap.dedent("""
    import os, sys, vmsnap_native as v
    out, go = int(sys.argv[1]), int(sys.argv[2])
    for fd in (0, 1, 2):
        os.close(fd)
    s = v.freeze_filesystems(sys.argv[3:], timeout=60)
    s.freeze()
    os.write(out, b"%d\\n" % s.guardian_pid)
    os.read(go, 1)
    try:
        s.thaw()
    finally:
        os.write(out, (" ".join(m.state for m in s.mounts) + " " + str(s.thaw_reason)
                       + "\\n").encode())
""")


def test_emergency_thaw_uses_the_controllers_own_fds(loopfs):
    mounts = loopfs.make(2)
    out_r, out_w = os.pipe()
    go_r, go_w = os.pipe()
    ctl = subprocess.Popen([sys.executable, "-c", RENUMBERED, str(out_w), str(go_r), *mounts],
                           pass_fds=(out_w, go_r))
    os.close(out_w)
    os.close(go_r)
    try:
        with os.fdopen(out_r) as out:
            guardian = int(out.readline())
            assert all(frozen_state(m) for m in mounts)
            os.kill(guardian, signal.SIGKILL)
            assert gone(guardian)
            os.write(go_w, b"x")
            states = out.readline().split()
        assert ctl.wait(timeout=30) is not None
    finally:
        os.close(go_w)
        ctl.kill()
        ctl.wait()
    # the kernel's word, not the controller's
    assert thawed_soon(mounts), "the emergency thaw left a filesystem frozen: %s" % states
    assert states == ["thawed", "thawed", "emergency"], states


def test_vmsnap_thaw_refuses_a_live_run_unless_forced(loopfs):
    (mnt,) = loopfs.make(1)
    ctl = subprocess.Popen([sys.executable, "-c", LIVE_RUN, mnt], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    try:
        assert ctl.stdout.readline().startswith("frozen")
        p = vmsnap_cli("thaw", "--json")
        assert p.returncode == 1
        assert "pid %d" % ctl.pid in p.stderr and "--force" in p.stderr, p.stderr
        assert json.loads(p.stdout)["status"] == "refused"
        assert frozen_state(mnt), "`vmsnap thaw` without --force thawed a live run"
        with pytest.raises(BusyError, match="pid %d" % ctl.pid):
            vmsnap.thaw_recorded()   # what the next run's recovery calls, too
        p = vmsnap_cli("thaw", "--force")
        assert p.returncode == 0, p.stderr
        assert not frozen_state(mnt)
        ctl.stdin.write("x")
        ctl.stdin.flush()
        early = ctl.stdout.readline()
        assert early.strip() == "early: vmsnap thaw --force from another shell", early
    finally:
        ctl.kill()
        ctl.wait()


def wait_for(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def test_thawed_early_names_the_cause(loopfs):
    (mnt,) = loopfs.make(1)
    with vmsnap.freeze_filesystems([mnt], timeout=30) as s:
        assert s.thawed_early() is None
        os.kill(s.guardian_pid, signal.SIGUSR1)
        assert wait_for(lambda: s.thawed_early() == "signal to the guardian"), s.thawed_early()
    with vmsnap.freeze_filesystems([mnt], timeout=0.5) as s:
        assert wait_for(lambda: s.thawed_early() is not None)
        assert s.thawed_early() == "deadline"
        # thawed by the guardian at the deadline, with the session still open
        assert wait_for(lambda: not frozen_state(mnt), timeout=2.0), \
            "still frozen past the deadline: nobody but the controller thaws"
    with vmsnap.freeze_filesystems([mnt], timeout=30) as s:
        os.kill(s.guardian_pid, signal.SIGKILL)
        assert wait_for(lambda: s.thawed_early() == "guardian died"), s.thawed_early()
        assert frozen_state(mnt)   # nobody has thawed yet: the thaw below does
    assert not frozen_state(mnt)


@pytest.mark.timing
def test_freeze_cap_counts_from_the_first_fifreeze_not_the_presync(nested):
    outer, inner = nested
    # the inner's flush writes into its image on the outer: frozen, the flush waits
    with flush_stuck_behind(outer, inner):
        s = vmsnap.freeze_filesystems([inner], timeout=5, presync_timeout=1)
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("r", s.freeze()))
        t0 = time.monotonic_ns()
        t.start()
        time.sleep(2.5)
        fsfreeze("-u", outer)
    t.join(60)
    try:
        assert not t.is_alive()
        assert s.all_frozen and not s.deadline_hit, [m.to_dict() for m in s.mounts]
        assert s.presync_timed_out and 900 <= s.presync_ms <= 2400, s.presync_ms
        first = s.first_freeze_ns
        assert first is not None and (first - t0) / 1e9 >= 2.0   # once the flush could end
        cap = (s.deadline_ns - first) / 1e9
        assert 4.9 <= cap <= 5.1, "deadline %.3f s after the first FIFREEZE" % cap
        assert s.thawed_early() is None
    finally:
        s.thaw()
    assert not frozen_state(inner)


@pytest.mark.timing
@pytest.mark.ci_optional   # a kernel and container property, not the suite's
def test_rcu_expedited_restored_when_the_guardian_dies_mid_wave(nested, rcu_off):
    outer, inner = nested
    # The switch is the machine's: another freeze there may have it on when this
    # guardian starts its wave, and then this guardian rightly leaves it alone and
    # there is nothing to test.  Its own record says which: such a try is undone
    # and made again (3 tries); a guardian that never expedites fails all three.
    for _ in range(3):
        with open(RCU, "w") as f:
            f.write("0")
        with flush_stuck_behind(outer, inner):
            s = vmsnap.freeze_filesystems([inner], timeout=30, presync=False)
            box: dict = {}

            def freeze(s=s, box=box):
                try:
                    s.freeze()
                except FreezeError as exc:
                    box["error"] = str(exc)

            t = threading.Thread(target=freeze)
            t.start()
            killed = False
            try:
                # the wave is under way, the inner's FIFREEZE stuck in its flush
                assert wait_for(lambda s=s: s._shared is not None and s._shared.fs[0].state == 3)
                if not (s._shared.rcu_expedited == 1 and s._shared.rcu_restore == 0):
                    continue   # another freeze had the switch on: undone in finally, tried again
                os.kill(s.guardian_pid, signal.SIGKILL)
                killed = True
                time.sleep(0.2)
                fsfreeze("-u", outer)   # the FIFREEZE lands, the guardian's last thread exits
                t.join(60)
                assert not t.is_alive()
                assert "guardian died" in box.get("error", ""), box
                with open(RCU) as f:
                    assert f.read().strip() == "0", "rcu_expedited left on after the guardian's death"
                assert not frozen_state(outer) and not frozen_state(inner)
                return
            finally:
                fsfreeze("-u", outer)
                t.join(60)
                if not killed:
                    s.thaw()   # nothing left frozen or holding on for the tests after
    pytest.fail("the guardian never expedited in 3 tries (rcu_expedited set to 0 before each)")


@pytest.mark.timing
def test_a_record_on_another_filesystem_is_rewritten_in_the_window(loopfs):
    # the runtime directory is on /run (a tmpfs), not on what is frozen: the
    # guardian keeps its record up to date through the window
    (mnt,) = loopfs.make(1)
    with vmsnap.freeze_filesystems([mnt], timeout=5) as s:
        assert s.all_frozen
        assert s.record_live


def test_record_on_a_frozen_btrfs_subvolume_is_not_rewritten(loopfs, monkeypatch):
    (mnt,) = loopfs.make(1, fstype="btrfs")
    sub = os.path.join(mnt, "sub")
    subprocess.run(["btrfs", "-q", "subvolume", "create", sub], check=True, timeout=60)
    rundir = os.path.join(sub, "run")
    os.mkdir(rundir, 0o700)
    assert os.stat(rundir).st_dev != os.stat(mnt).st_dev   # the trap: st_dev differs
    monkeypatch.setenv("VMSNAP_RUNTIME_DIR", rundir)
    s = vmsnap.freeze_filesystems([mnt], timeout=5)
    t = threading.Thread(target=s.freeze)
    t0 = time.monotonic()
    t.start()
    t.join(4)
    hung = t.is_alive()
    if hung:
        fsfreeze("-u", mnt)   # the guardian's record write unblocks
        t.join(60)
    s.thaw()
    assert not hung, "the guardian blocked writing its record on the filesystem it froze"
    assert s.all_frozen and not s.record_live
    assert time.monotonic() - t0 < 4
    assert not frozen_state(mnt)
    assert not os.path.exists(s.record_path)


# a session started but never frozen: the record shows every entry pending
STARTED = textwrap.dedent("""
    import sys, time, vmsnap_native as v
    s = v.freeze_filesystems(sys.argv[1:], timeout=60).start()
    print(s.guardian_pid, s.record_path, flush=True)
    time.sleep(120)
""")


def test_recovery_leaves_a_freeze_it_never_made_alone(loopfs):
    (mnt,) = loopfs.make(1)
    ctl = subprocess.Popen([sys.executable, "-c", STARTED, mnt], stdout=subprocess.PIPE,
                           text=True)
    try:
        guardian, record = ctl.stdout.readline().split()
        os.kill(ctl.pid, signal.SIGSTOP)
        os.kill(int(guardian), signal.SIGKILL)
        assert gone(int(guardian))
    finally:
        ctl.kill()
        ctl.wait()
    assert os.path.exists(record)
    assert fsfreeze("-f", mnt).returncode == 0   # someone else's freeze
    results = vmsnap.thaw_recorded()
    assert frozen_state(mnt), "recovery thawed a freeze vmsnap never made"
    assert [r.outcome for r in results] == ["not frozen by vmsnap (pending): left alone"]
    assert not os.path.exists(record)


FREEZER = textwrap.dedent("""
    import sys, time, vmsnap_native as v
    s = v.freeze_filesystems(sys.argv[1:], timeout=60)
    s.freeze()
    print(s.guardian_pid, s.record_path, flush=True)
    time.sleep(120)
""")


@pytest.mark.parametrize("tamper", ["mode 0644", "owner nobody", "runtime dir 0755"])
def test_only_root_written_records_are_thawed(loopfs, tamper):
    (mnt,) = loopfs.make(1)
    ctl = subprocess.Popen([sys.executable, "-c", FREEZER, mnt], stdout=subprocess.PIPE,
                           text=True)
    try:
        guardian, record = ctl.stdout.readline().split()
        os.kill(ctl.pid, signal.SIGSTOP)
        os.kill(int(guardian), signal.SIGKILL)
        assert gone(int(guardian))
    finally:
        ctl.kill()
        ctl.wait()
    rundir = os.path.dirname(record)
    if tamper == "mode 0644":
        os.chmod(record, 0o644)
    elif tamper == "owner nobody":
        os.chown(record, 65534, -1)
    else:
        os.chmod(rundir, 0o755)
    try:
        results = vmsnap.thaw_recorded()
        assert frozen_state(mnt), "a record anyone could have written was acted on"
        assert results and ("untrusted" in results[0].outcome), results
    finally:
        os.chmod(rundir, 0o700)
        os.chown(record, 0, -1)
        os.chmod(record, 0o600)
    assert [r.outcome for r in vmsnap.thaw_recorded()] == ["thawed"]
    assert not frozen_state(mnt)


def test_a_record_that_could_not_be_kept_is_thawed_only_when_forced(loopfs):
    # the record lives on the filesystem it freezes: never rewritten in the
    # window, so it never learns what froze; `vmsnap thaw` says so
    (mnt,) = loopfs.make(1)
    rundir = os.path.join(mnt, "run")
    os.mkdir(rundir, 0o700)
    env = dict(os.environ, VMSNAP_RUNTIME_DIR=rundir)
    ctl = subprocess.Popen([sys.executable, "-c", FREEZER, mnt], stdout=subprocess.PIPE,
                           text=True, env=env)
    try:
        guardian, record = ctl.stdout.readline().split()
        os.kill(ctl.pid, signal.SIGSTOP)
        os.kill(int(guardian), signal.SIGKILL)
        assert gone(int(guardian))
    finally:
        ctl.kill()
        ctl.wait()
    os.environ["VMSNAP_RUNTIME_DIR"], saved = rundir, os.environ["VMSNAP_RUNTIME_DIR"]
    try:
        outcomes = [r.outcome for r in vmsnap.thaw_recorded()]
        assert len(outcomes) == 1 and outcomes[0].startswith("failed: state unknown"), outcomes
        assert frozen_state(mnt) and os.path.exists(record)
        assert [r.outcome for r in vmsnap.thaw_recorded(force=True)] == ["thawed"]
    finally:
        os.environ["VMSNAP_RUNTIME_DIR"] = saved
    assert not frozen_state(mnt) and not os.path.exists(record)


def test_a_filesystem_thawed_from_outside_is_reported_not_frozen(loopfs):
    # FITHAW's EINVAL through the session's own, verified fd: "not frozen",
    # never "thawed" and never a failure to retry
    (mnt,) = loopfs.make(1)
    with vmsnap.freeze_filesystems([mnt], timeout=30) as s:
        assert fsfreeze("-u", mnt).returncode == 0
    (m,) = s.mounts
    assert m.state == "not-frozen" and "EINVAL" in m.error, m.to_dict()
    assert not os.path.exists(s.record_path)
