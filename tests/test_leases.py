"""Held freezes (leases) by id: `vmsnap freeze` prints a session id, `vmsnap
thaw --session ID` ends that freeze and no other, and says when the lease
had already expired; the crash records behind them are named so that a
crash can never make a name collide, and an empty one left by a creator
that died is removed, not reported forever."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from vmsnap_native import freeze as freeze_mod
from vmsnap_native import held as held_mod
from vmsnap_native import process

from .conftest import frozen_state, root_only, thawed_soon
from .helpers import FIFREEZE, in_fifreeze, pin_freeze, unpin_freeze
from .helpers import vmsnap as cli

pytestmark = root_only
FITHAW = 0xC0045878


def freeze(*mounts, timeout="30"):
    args = ["freeze", "--timeout", timeout, "--json"]
    for m in mounts:
        args += ["--mount", m]
    p = cli(*args)
    out = json.loads(p.stdout)
    assert p.returncode == 0 and out["status"] == "frozen", p.stderr
    return out


def thaw_session(sid):
    p = cli("thaw", "--session", sid, "--json")
    return p.returncode, json.loads(p.stdout), p.stderr


def test_freeze_prints_its_session_and_thaw_session_ends_it(loopfs):
    (m,) = loopfs.make(1)
    p = cli("freeze", "--timeout", "30", "--mount", m)
    sid = p.stdout.strip()
    assert p.returncode == 0 and re.fullmatch(r"\d+-\d+-[0-9a-f]{8}", sid), (p.stdout, p.stderr)
    assert "session %s" % sid in p.stderr
    assert frozen_state(m)
    rc, out, err = thaw_session(sid)
    assert rc == 0 and out["status"] == "thawed" and out["session"] == sid, err
    assert [f["mountpoint"] for f in out["filesystems"]] == [m]
    assert not frozen_state(m)
    # again: that lease is over
    rc, out, _ = thaw_session(sid)
    assert rc == 1 and out["status"] == "expired"


def test_an_expired_lease_is_reported_and_the_newer_freeze_is_left_alone(loopfs):
    (m,) = loopfs.make(1)
    first = freeze(m, timeout="1")["session"]
    assert thawed_soon([m], timeout=20), "the first lease did not expire"
    second = freeze(m, timeout="30")["session"]
    assert second != first
    try:
        rc, out, err = thaw_session(first)
        assert rc == 1 and out["status"] == "expired", err
        assert "expired" in err
        assert frozen_state(m), "thaw --session of an expired lease thawed a newer freeze"
        rc, out, err = thaw_session(second)
        assert rc == 0 and out["status"] == "thawed", err
        assert not frozen_state(m)
    finally:
        cli("thaw")


def test_a_lease_that_expires_while_held_is_not_reported_thawed(loopfs):
    """Its guardian thawed at the deadline and is gone: the caller learns
    its snapshot was not taken under the freeze."""
    (m,) = loopfs.make(1)
    sid = freeze(m, timeout="1")["session"]
    time.sleep(2.5)
    rc, out, err = thaw_session(sid)
    assert rc == 1 and out["status"] == "expired", err


def test_unknown_sessions(loopfs):
    rc, out, _ = thaw_session("not-a-session")
    assert rc == 1 and out["status"] == "unknown"
    (m,) = loopfs.make(1)
    sid = freeze(m)["session"]
    try:
        # a live process that is not a guardian: this test's own pid
        me = "%d-%d-%s" % (os.getpid(), process.starttime(os.getpid()), sid.split("-")[2])
        rc, out, _ = thaw_session(me)
        assert rc == 1 and out["status"] == "unknown"
        # another boot's id: that freeze ended with the restart
        rc, out, _ = thaw_session(sid[:-8] + "00000000")
        assert rc == 1 and out["status"] == "expired" and "restarted" in out["message"]
        assert frozen_state(m)
    finally:
        assert thaw_session(sid)[0] == 0


# The lease's watcher thaws within this of its guardian's SIGKILL: the
# reaper has it waiting already; the run lock, a Python start on a busy host.
WATCH_BOUND_S = 15.0


def _records():
    return [r for r in freeze_mod._records() if os.path.exists(r)]


def _wait_guardian_record(timeout=30.0):
    """(record path, guardian pid) of the freeze being made now."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for path in _records():
            try:
                _, sh = freeze_mod._read_record(path)
            except (OSError, ValueError):
                continue
            if process.alive(sh.guardian_pid, sh.guardian_starttime):
                return path, sh.guardian_pid
        time.sleep(0.002)
    raise AssertionError("no guardian started")


def _handed_over():
    """A guardian holds a freeze handed over to it (a lease) now."""
    for path in _records():
        try:
            _, sh = freeze_mod._read_record(path)
        except (OSError, ValueError):
            continue
        if sh.detached and process.alive(sh.guardian_pid, sh.guardian_starttime):
            return True
    return False


def test_a_lease_whose_guardian_is_sigkilled_thaws_at_once(loopfs):
    """Nobody is left to thaw when the guardian of a lease dies after
    `vmsnap freeze` exited: its watcher does, from the record, long before
    the deadline; `thaw --session` then reports the lease as expired."""
    ms = loopfs.make(2)
    out = freeze(*ms, timeout="120")
    assert all(frozen_state(m) for m in ms)
    t0 = time.monotonic()
    os.kill(out["guardian_pid"], signal.SIGKILL)
    try:
        assert thawed_soon(ms, timeout=WATCH_BOUND_S), \
            "still frozen %.0f s after the guardian's SIGKILL" % (time.monotonic() - t0)
        end = time.monotonic() + 5
        while os.path.exists(out["record"]) and time.monotonic() < end:
            time.sleep(0.02)
        assert not os.path.exists(out["record"]), "the record was not handled"
        rc, res, err = thaw_session(out["session"])
        assert rc == 1 and res["status"] == "expired", (res, err)
    finally:
        cli("thaw")


def test_sigkill_of_vmsnap_freeze_at_any_instant_never_leaves_a_freeze(loopfs):
    """`vmsnap freeze` SIGKILLed during its freeze: the guardian thaws at
    once; SIGKILLed after the handover: the lease holds and ends normally."""
    (m,) = loopfs.make(1)
    for delay in (0.0, 0.15, 0.3, 0.5, 0.8):
        p = subprocess.Popen([sys.executable, "-m", "vmsnap_native", "freeze", "--timeout", "120",
                              "--mount", m], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        _wait_guardian_record()
        time.sleep(delay)
        p.kill()
        out, _ = p.communicate()
        sid = out.strip()
        if sid:   # it had handed the freeze over: a lease, ended by its id
            assert frozen_state(m)
            assert thaw_session(sid)[0] == 0
        elif _handed_over():   # killed between the handover and printing its id
            assert frozen_state(m)
            assert cli("thaw").returncode == 0
        assert thawed_soon([m], timeout=WATCH_BOUND_S), "frozen after SIGKILL at +%gs" % delay
        end = time.monotonic() + 5
        while _records() and time.monotonic() < end:
            time.sleep(0.02)
        assert not _records(), "records left after SIGKILL at +%gs" % delay


def _sigkill_both_after(ms, delay):
    p = subprocess.Popen([sys.executable, "-m", "vmsnap_native", "freeze", "--timeout", "120",
                          *sum((["--mount", m] for m in ms), [])],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    record, gpid = _wait_guardian_record()
    time.sleep(delay)
    os.kill(gpid, signal.SIGKILL)
    p.kill()
    p.communicate()
    return record, gpid


def _record_handled(record, when):
    end = time.monotonic() + 5
    while os.path.exists(record) and time.monotonic() < end:
        time.sleep(0.02)
    if os.path.exists(record):
        # both died before the watcher was left to the reaper: that is
        # before the freeze command, so the record shows nothing frozen
        _, sh = freeze_mod._read_record(record)
        states = {freeze_mod.state_name(sh.fs[i].state) for i in range(sh.n)}
        assert not states & freeze_mod.MAYBE_OURS, \
            "the record was not handled (%s): %s" % (when, states)


@pytest.mark.parametrize("when", ["after-the-freeze", "during-the-wave"])
def test_sigkill_of_vmsnap_freeze_and_its_guardian_together(loopfs, when):
    """Both die, after the freeze or while the guardian's freeze wave runs:
    nothing stays frozen, the record is handled.  Mid-wave is not left to
    chance: a writer holds the first filesystem's FIFREEZE in the kernel
    (see helpers.pin_freeze) and both are killed while it waits there; it lands
    once the writer lets go, after both are dead.  The guardian recorded
    the wave as "may be ours" before its first FIFREEZE, so the watcher
    thaws what landed."""
    ms = loopfs.make(2)
    if when == "after-the-freeze":
        for delay in (0.2, 0.5, 1.0):
            record, _ = _sigkill_both_after(ms, delay)
            try:
                assert thawed_soon(ms, timeout=WATCH_BOUND_S), \
                    "frozen after both SIGKILLs at +%gs" % delay
                _record_handled(record, "+%gs" % delay)
            finally:
                cli("thaw")
        return
    pin = pin_freeze(ms[0])
    try:
        time.sleep(0.1)   # into the splice
        p = subprocess.Popen([sys.executable, "-m", "vmsnap_native", "freeze", "--timeout", "120",
                              *sum((["--mount", m] for m in ms), [])],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        record, gpid = _wait_guardian_record()
        end = time.monotonic() + 30
        while not in_fifreeze(gpid):
            assert time.monotonic() < end and p.poll() is None, \
                "the guardian never reached its FIFREEZE of %s" % ms[0]
            time.sleep(0.005)
        start = process.starttime(gpid)
        os.kill(gpid, signal.SIGKILL)
        p.kill()
        p.communicate()
        unpin_freeze(pin)   # the guardian's FIFREEZE lands, both dead
        assert pin.returncode == 0
        assert process.wait_gone(gpid, start, 30), "the guardian is still there"
        assert thawed_soon(ms, timeout=WATCH_BOUND_S), "frozen after both SIGKILLs mid-wave"
        _record_handled(record, "mid-wave")
    finally:
        unpin_freeze(pin)
        cli("thaw")


def _record_states(record):
    """{mount point: state name} as the guardian's record on disk says."""
    _, sh = freeze_mod._read_record(record)
    return {os.fsdecode(freeze_mod.core()[0].string(sh.fs[i].path)):
            freeze_mod.state_name(sh.fs[i].state) for i in range(sh.n)}


def _sigkill_both(gpid, p, pin):
    """SIGKILL of the guardian and `vmsnap freeze`, then the pinned FIFREEZE let go."""
    start = process.starttime(gpid)
    os.kill(gpid, signal.SIGKILL)
    p.kill()
    p.communicate()
    unpin_freeze(pin)
    assert process.wait_gone(gpid, start, 30), "the guardian is still there"


@contextlib.contextmanager
def someone_elses_freeze(mountpoint):
    """MOUNTPOINT frozen by another process (this one, by FIFREEZE) for the
    duration; thawed after, and anything vmsnap left is thawed too."""
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.ioctl(fd, FIFREEZE, 0)
    try:
        yield
    finally:
        try:
            fcntl.ioctl(fd, FITHAW, 0)
        except OSError:
            pass
        os.close(fd)
        cli("thaw")


def test_sigkill_of_both_mid_wave_leaves_a_freeze_of_someone_else_frozen(loopfs):
    """Mid-wave as above, with a filesystem someone else had frozen before:
    the guardian's FIFREEZE met it with EBUSY and recorded it as busy, so
    recovery thaws what the guardian froze and leaves that one frozen for
    its owner.  Nested, so the order is fixed: the children (ms[1], ms[2],
    someone else's) are the first wave, the parent (ms[0], held in its
    FIFREEZE) the second."""
    (parent,) = loopfs.make(1)
    ms = [parent, *loopfs.make(2, parent=parent)]
    with someone_elses_freeze(ms[2]):
        pin = pin_freeze(ms[0])
        try:
            time.sleep(0.1)
            p = subprocess.Popen([sys.executable, "-m", "vmsnap_native", "freeze", "--timeout",
                                  "120", *sum((["--mount", m] for m in ms), [])],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            record, gpid = _wait_guardian_record()
            end = time.monotonic() + 60
            while True:
                states = _record_states(record)
                if in_fifreeze(gpid) and states[ms[2]] == "busy":
                    break
                assert time.monotonic() < end and p.poll() is None, \
                    "never both in the FIFREEZE of %s and %s recorded busy: %s" % (
                        ms[0], ms[2], states)
                time.sleep(0.005)
            _sigkill_both(gpid, p, pin)
            assert pin.returncode == 0
            assert thawed_soon(ms[:2], timeout=WATCH_BOUND_S), \
                "frozen after both SIGKILLs mid-wave"
            _record_handled(record, "mid-wave")
            assert frozen_state(ms[2]), "someone else's freeze was thawed"
        finally:
            unpin_freeze(pin)


def test_sigkill_of_both_while_a_late_filesystem_waits_leaves_its_other_freeze_frozen(loopfs):
    """Mid-wave again, but the filesystem someone else froze is a sibling
    that the just-in-time order holds back (its presync was quick, the busy
    one's takes a second): both die while the busy one's FIFREEZE runs, the
    sibling's FIFREEZE was never issued.  The record must not call it
    "may be ours" then (marked per FIFREEZE, not per wave): recovery thaws
    the busy one and leaves the other freeze standing."""
    from .test_jit_freeze import SlowFlush, busy_on_a_holder, settle
    holder, busy = busy_on_a_holder(loopfs)
    (quiet,) = loopfs.make(1, size_mb=256)
    settle(quiet)
    with someone_elses_freeze(quiet):              # before vmsnap starts
        slow = SlowFlush(holder, busy)             # the busy one's presync takes >= 1 s
        pin = pin_freeze(busy)                     # and its FIFREEZE waits in the kernel
        try:
            p = subprocess.Popen([sys.executable, "-m", "vmsnap_native", "freeze", "--timeout",
                                  "120", "--mount", busy, "--mount", quiet],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            record, gpid = _wait_guardian_record()
            time.sleep(2.5)
            slow.release()
            end = time.monotonic() + 60
            while not in_fifreeze(gpid):
                assert time.monotonic() < end and p.poll() is None, \
                    "never in the busy one's FIFREEZE"
                time.sleep(0.005)
            states = _record_states(record)
            _sigkill_both(gpid, p, pin)
            assert thawed_soon([busy], timeout=WATCH_BOUND_S), "ours frozen after both SIGKILLs"
            _record_handled(record, "mid-wave")
            assert states[quiet] != "freezing", states
            assert frozen_state(quiet), "someone else's freeze was thawed (record: %s)" % states
        finally:
            unpin_freeze(pin)
            slow.close()


def test_the_library_calls_behind_them(loopfs):
    (m,) = loopfs.make(1)
    h = held_mod.freeze_and_hold(None, [m], 30)
    assert h.status == "frozen" and h.session and h.to_dict()["session"] == h.session
    t = held_mod.thaw_session(h.session)
    assert t.ok and t.status == "thawed" and not frozen_state(m)
    assert held_mod.thaw_session(h.session).status == "expired"


def test_a_freeze_timeout_too_short_says_why(loopfs):
    (m,) = loopfs.make(1)
    p = cli("freeze", "--timeout", "0.0000001", "--mount", m, "--json")
    out = json.loads(p.stdout)
    assert p.returncode == 1 and out["status"] == "failed", p.stderr
    assert out["errors"] and not any("None" in e for e in out["errors"]), out["errors"]
    assert "timeout" in out["errors"][0]
    assert not frozen_state(m)


# -- the records behind them -------------------------------------------------------

def test_record_names_carry_their_creator_and_an_unpredictable_part(loopfs):
    (m,) = loopfs.make(1)
    names = []
    for _ in range(2):
        with freeze_mod.freeze_filesystems([m], timeout=30) as s:
            names.append(os.path.basename(s.record_path))
    me = "freeze-%d-%d-" % (os.getpid(), process.starttime(os.getpid()))
    assert all(n.startswith(me) and re.fullmatch(r"freeze-\d+-\d+-[0-9a-f]{16}\.rec", n)
               for n in names), names
    assert names[0] != names[1]


def dead_process():
    p = subprocess.Popen(["sleep", "30"])   # alive until its start time is read
    st = process.starttime(p.pid)
    p.kill()
    p.wait()
    return p.pid, st


@pytest.mark.parametrize("tag", ["", "gentle-"])   # a session's record, a gentle presync's
@pytest.mark.parametrize("content", [b"", b"\0" * 100], ids=["empty", "zeros"])
def test_an_empty_record_of_a_creator_that_died_is_removed_not_reported(tmp_path, content, tag):
    rdir = freeze_mod.ensure_runtime_dir()
    pid, st = dead_process()
    dead = os.path.join(rdir, "freeze-%d-%d-%s0123456789abcdef.rec" % (pid, st, tag))
    alive = os.path.join(rdir, "freeze-%d-%d-%sfedcba9876543210.rec"
                         % (os.getpid(), process.starttime(os.getpid()), tag))
    for path in (dead, alive):   # as a SIGKILL between creating and writing leaves it
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, content)
        os.close(fd)
    try:
        p = cli("thaw", "--json")
        out = json.loads(p.stdout)
        assert p.returncode == 0 and out["status"] == "nothing", p.stderr
        assert out["filesystems"] == []
        assert [r["record"] for r in out["records"]] == [dead], out
        assert out["records"][0]["outcome"].startswith("removed: an incomplete record")
        assert not os.path.exists(dead)
        # its creator alive: being written, neither touched nor reported
        assert os.path.exists(alive)
        out = json.loads(cli("thaw", "--json").stdout)
        assert out["records"] == [] and out["filesystems"] == []
    finally:
        for path in (dead, alive):
            if os.path.exists(path):
                os.unlink(path)


def test_thaw_session_takes_the_run_lock_like_every_thaw(loopfs):
    """While something holds the run lock, a lease is not thawed under it:
    thaw_session waits (bounded), then says so; the lease stays held."""
    from vmsnap_native.lock import RunLock
    (m,) = loopfs.make(1)
    h = held_mod.freeze_and_hold(None, [m], 30)
    assert h.status == "frozen", h.errors
    try:
        with RunLock():
            t = held_mod.thaw_session(h.session, timeout=0.5)
        assert t.status == "failed" and "holds" in t.message, t
        assert frozen_state(m)
    finally:
        t = held_mod.thaw_session(h.session)
    assert t.status == "thawed" and not frozen_state(m)


# -- the Ansible module's own view of its group session's process ------------------

ANSIBLE_MODULE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "contrib", "ansible", "plugins", "modules", "vmsnap.py")


@pytest.fixture
def ansible_module():
    """contrib/ansible/plugins/modules/vmsnap.py, loaded alone as Ansible ships
    it (its ansible import stubbed when ansible is not installed)."""
    import importlib.util
    import types
    names = ("ansible", "ansible.module_utils", "ansible.module_utils.basic")
    saved = {k: sys.modules.get(k) for k in names}
    try:
        import ansible.module_utils.basic  # noqa: F401
    except ImportError:
        for name in names:
            sys.modules[name] = types.ModuleType(name)
        sys.modules["ansible.module_utils.basic"].AnsibleModule = None
    try:
        spec = importlib.util.spec_from_file_location("vmsnap_ansible_module", ANSIBLE_MODULE)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        for name, m in saved.items():
            if m is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = m


def test_the_ansible_module_knows_its_session_process_by_pid_and_start_time(ansible_module,
                                                                            tmp_path):
    """Its launcher writes "PID START"; a pid file naming a live process of
    another start time (a reused pid) is not the session's process."""
    d = str(tmp_path)
    p = subprocess.Popen(["/bin/sh", "-c", ansible_module.LAUNCH, d, "sleep", "30"])
    try:
        end = time.monotonic() + 10
        while not os.path.exists(os.path.join(d, "pid")) and time.monotonic() < end:
            time.sleep(0.01)
        with open(os.path.join(d, "pid")) as f:
            assert f.read().split() == [str(p.pid), str(process.starttime(p.pid))]
        assert ansible_module.session_state(d)["running"]
        # a pid reused by another process: here this test's own, live, pid with
        # a start time that is not its own
        me, mine = os.getpid(), process.starttime(os.getpid())
        with open(os.path.join(d, "pid"), "w") as f:
            f.write("%d %d\n" % (me, mine + 1))
        st = ansible_module.session_state(d)
        assert st["pid"] == me and not st["running"], "a reused pid passed for the session's"
        with open(os.path.join(d, "pid"), "w") as f:
            f.write("%d %d\n" % (me, mine))
        assert ansible_module.session_state(d)["running"]
    finally:
        p.kill()
        p.wait()
    # gone: its own pid file, rewritten as it was, names nobody alive
    with open(os.path.join(d, "pid"), "w") as f:
        f.write("%d %d\n" % (p.pid, 1))
    assert not ansible_module.session_state(d)["running"]
