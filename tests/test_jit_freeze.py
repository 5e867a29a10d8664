"""Just-in-time freezing (issue 13): within a level the filesystems with
much to flush start first and the quiet ones once those are frozen; levels
still go children first; everything is frozen when freeze() returns; each
filesystem's blocked time is reported."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import vmsnap_native as vmsnap

from .conftest import frozen_state, root_only

pytestmark = root_only

# Rewrites a 96 MiB file in 1 MiB writes until killed: its presync (and
# freeze) must flush what it re-dirties meanwhile.
STREAM = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)
block = b"s" * (1 << 20)
i = 0
while True:
    os.pwrite(fd, block, (i % 96) << 20)
    i += 1
"""


class Streaming:
    def __init__(self, mountpoint):
        self.path = os.path.join(mountpoint, "s")
        self.proc = subprocess.Popen([sys.executable, "-c", STREAM, self.path],
                                     start_new_session=True)
        time.sleep(1.0)   # the file exists and is dirty

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def entries(s):
    """mountpoint -> its entry in the shared block (absolute times)."""
    return {s.targets[i].mount.mountpoint: s._shared.fs[i] for i in range(len(s.targets))}


CACHESTAT = 451   # cachestat(2), Linux 6.5: the same number on every architecture


def unflushed_mib(path):
    """How many MiB of PATH's page cache are dirty or under writeback
    (cachestat(2)), or None where the kernel has no cachestat."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    rng = (ctypes.c_uint64 * 2)(0, 0)    # offset 0, length 0: the whole file
    st = (ctypes.c_uint64 * 5)()         # cache, dirty, writeback, evicted, recently evicted
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.syscall(CACHESTAT, fd, rng, st, 0) != 0:
            return None
    finally:
        os.close(fd)
    return (st[1] + st[2]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


@pytest.fixture(autouse=True)
def _dirty_files_dropped(loopfs):
    """After the test (and before the loop filesystems' teardown) the streaming
    and dirty files are removed, thawed first: their dirty pages go with them
    instead of being written out, some seconds of each test, by the umount."""
    yield
    for m, _ in loopfs.mounts:
        subprocess.run(["fsfreeze", "-u", m], stderr=subprocess.DEVNULL)
        for name in ("s", "dirty"):
            try:
                os.unlink(os.path.join(m, name))
            except FileNotFoundError:
                pass


def settle(*mountpoints):
    """Nothing left to flush on MOUNTPOINTS: their presync has nothing to do."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    for m in mountpoints:   # syncfs(2) of each: never sync(2), which waits on every filesystem
        fd = os.open(m, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert libc.syncfs(fd) == 0, os.strerror(ctypes.get_errno())
        finally:
            os.close(fd)


def backing_file(mountpoint):
    """The image file behind MOUNTPOINT's loop device."""
    dev = os.stat(mountpoint).st_dev
    with open("/sys/dev/block/%d:%d/loop/backing_file" % (os.major(dev), os.minor(dev))) as f:
        return f.read().strip()


HOLD_S = 1.0   # the busy one's presync takes this long at least: a quick one's at most 1/4


def busy_on_a_holder(loopfs):
    """(holder, busy): BUSY's image lives on HOLDER, a filesystem of its own
    outside the session: while HOLDER is frozen nothing BUSY flushes reaches
    its image."""
    (holder,) = loopfs.make(1, size_mb=320)
    (busy,) = loopfs.make(1, size_mb=256, parent=holder)
    return holder, busy


class SlowFlush:
    """BUSY's presync made slow whatever the machine's pace: its holder is
    frozen, 32 MiB are written to BUSY (they cannot leave its page cache, the
    loop device's writes wait on the frozen holder: checked), and the holder
    is thawed HOLD_S after the session's presync of BUSY has begun.  Before,
    the tests wrote and hoped the kernel had not flushed the data by then: on
    a loaded machine the image's own writeback had (31 of 128 MiB left)."""

    def __init__(self, holder, busy):
        import threading
        self.holder, self.busy = holder, busy
        self.done = threading.Event()
        self.thread = None
        self.threading = threading
        self.safety = None
        # arranged, then checked; under heavy load the kernel has once got most
        # of the data out of both caches before the check (13 of 32 MiB left):
        # the arrangement is then made again, three times at most
        for _ in range(3):
            held = self._hold(os.path.join(busy, "dirty"))
            if held is None or held >= 32 * 0.9:
                return
            self.safety.cancel()
            self.release()
        raise AssertionError("only %.0f of 32 MiB left to flush, three times" % held)

    def _hold(self, path):
        """Freezes the holder and writes 32 MiB to PATH on BUSY; how many MiB
        of them are left to flush (None where the kernel cannot tell)."""
        # opened before the holder is frozen: a lookup on BUSY then would read
        # through the loop device, queued behind the writes that wait on the holder
        with open(path, "wb") as f:
            subprocess.run(["fsfreeze", "-f", self.holder], check=True)
            # never left frozen for long, whatever happens below
            self.safety = self.threading.Timer(20, self.release)
            self.safety.daemon = True
            self.safety.start()
            block = b"d" * (1 << 20)
            for _ in range(32):
                f.write(block)
            # in the file, or already copied into the image's page cache by the
            # loop device (the frozen holder keeps them there: no writeback)
            mine, image = unflushed_mib(path), unflushed_mib(backing_file(self.busy))
        return None if mine is None or image is None else mine + image

    def release_after_the_presync_began(self, s):
        """Thaws the holder HOLD_S after session S began BUSY's presync."""
        i = [t.mount.mountpoint for t in s.targets].index(self.busy)

        def run():
            end = time.monotonic() + 60
            while not s._shared.fs[i].sync_start_ns and time.monotonic() < end:
                time.sleep(0.001)
            self.done.wait(HOLD_S)
            self.release()
        self.thread = self.threading.Thread(target=run, daemon=True)
        self.thread.start()

    def release(self):
        subprocess.run(["fsfreeze", "-u", self.holder], stderr=subprocess.DEVNULL)

    def close(self):
        self.safety.cancel()
        self.done.set()
        if self.thread is not None:
            self.thread.join(60)
        self.release()


@pytest.mark.timing
def test_quiet_filesystems_start_once_the_busy_one_is_frozen(loopfs):
    holder, busy = busy_on_a_holder(loopfs)
    quiet1, quiet2 = loopfs.make(2, size_mb=256)
    w = Streaming(busy)
    slow = None
    try:
        # the condition arranged, not hoped for from the writer's pace on a loaded
        # machine: the busy one's presync takes HOLD_S at least, the quiet ones have
        # nothing to flush
        settle(quiet1, quiet2)
        slow = SlowFlush(holder, busy)
        s = vmsnap.freeze_filesystems([busy, quiet1, quiet2], timeout=30, schedule="jit")
        s.start()
        slow.release_after_the_presync_began(s)
        s.freeze()
        returned = time.monotonic_ns()
        try:
            by = entries(s)
            cost = {m: (by[m].sync_end_ns - by[m].sync_start_ns) / 1e6 for m in by}
            # everything is frozen at the instant the snapshot may start
            assert s.all_frozen, s.failures
            for m in (busy, quiet1, quiet2):
                assert by[m].freeze_end_ns <= returned
                assert frozen_state(m), "%s not frozen when freeze() returned" % m
            late = {m.mountpoint: m.late for m in s.mounts}
            assert late == {busy: False, quiet1: True, quiet2: True}, \
                "presync ms: busy %.1f, quiet %.1f and %.1f" % (cost[busy], cost[quiet1],
                                                               cost[quiet2])
            for q in (quiet1, quiet2):
                assert by[q].freeze_start_ns >= by[busy].freeze_end_ns
        finally:
            s.thaw()
    finally:
        if slow is not None:
            slow.close()
        w.stop()
    res = {m.mountpoint: m for m in s.mounts}
    assert all(m.state == "thawed" for m in res.values())
    for m in res.values():
        d = m.to_dict()
        assert d["blocked_ms"] == m.blocked_ms and m.blocked_ms is not None
        assert m.freeze_ms <= m.blocked_ms <= s.window_ms + 0.001
    # the quiet ones were not blocked while their neighbour flushed
    assert res[quiet1].blocked_ms < res[busy].blocked_ms
    assert res[quiet2].blocked_ms < res[busy].blocked_ms


@pytest.mark.timing
def test_children_still_before_parents_with_late_children(loopfs):
    holder, busy = busy_on_a_holder(loopfs)
    outer, = loopfs.make(1, size_mb=96)
    inner, = loopfs.make(1, parent=outer)   # level 0, quiet: late
    w = Streaming(busy)
    slow = None
    try:
        # the condition arranged, not hoped for from the writer's pace: the busy
        # child's presync takes HOLD_S at least, nothing to flush on the quiet one
        # (so it starts late) or its parent
        settle(inner, outer)
        slow = SlowFlush(holder, busy)
        s = vmsnap.freeze_filesystems([outer, inner, busy], timeout=30, schedule="jit")
        s.start()
        slow.release_after_the_presync_began(s)
        with s:
            by = entries(s)
            res = {m.mountpoint: m for m in s.mounts}
            cost = {m: (by[m].sync_end_ns - by[m].sync_start_ns) / 1e6 for m in by}
            assert res[inner].level == res[busy].level < res[outer].level
            assert res[inner].late and not res[busy].late, \
                "presync ms: busy %.1f, inner %.1f" % (cost[busy], cost[inner])
            assert s.all_frozen, s.failures
            # the parent's freeze starts only after every child's has returned
            assert by[outer].freeze_start_ns >= by[inner].freeze_end_ns
            assert by[outer].freeze_start_ns >= by[busy].freeze_end_ns
    finally:
        if slow is not None:
            slow.close()
        w.stop()
    assert all(m.state == "thawed" for m in s.mounts)


@pytest.mark.timing
def test_parallel_schedule_starts_a_level_at_once(loopfs):
    busy, quiet = loopfs.make(2, size_mb=256)
    w = Streaming(busy)
    try:
        with vmsnap.freeze_filesystems([busy, quiet], timeout=30, schedule="parallel") as s:
            by = entries(s)
            assert not any(m.late for m in s.mounts)
            # the quiet one starts with the busy one, not after it
            assert by[quiet].freeze_start_ns < by[busy].freeze_end_ns
    finally:
        w.stop()


@pytest.mark.timing
def test_idle_filesystems_all_start_together(loopfs):
    mounts = loopfs.make(3)
    with vmsnap.freeze_filesystems(mounts, timeout=10) as s:
        assert s.all_frozen and not any(m.late for m in s.mounts)


def test_unknown_schedule_is_refused_with_the_choices(loopfs):
    (m,) = loopfs.make(1)
    with pytest.raises(ValueError, match="jit, parallel.*'fast'"):
        vmsnap.freeze_filesystems([m], timeout=10, schedule="fast")


# -- `vmsnap bench --load` and its progress ---------------------------------------

def test_bench_under_load_reports_worst_writes_and_cleans_up(loopfs):
    import json as json_mod

    from .helpers import vmsnap as run_cli
    a, b = loopfs.make(2)
    p = run_cli("bench", "--mount", a, "--mount", b, "--rounds", "2", "--load", "light", "--json")
    assert p.returncode == 0, p.stderr
    report = json_mod.loads(p.stdout)
    assert report["load"] == "light"
    for k in ("sequential", "parallel", "jit"):
        assert report["window_ms"][k]["n"] == 2
        assert report["worst_write_ms"][k]["n"] == 2 and report["worst_write_ms"][k]["max"] > 0
    assert "round 1 of" not in p.stderr   # --json: no progress
    # the writers and probes are gone, and so are their files
    for m in (a, b):
        assert not [f for f in os.listdir(m) if f.startswith(".vmsnap-bench")]
    left = subprocess.run(["pgrep", "-f", "vmsnap-bench-load"], capture_output=True, text=True)
    assert left.stdout.strip() == ""


def test_bench_shows_rounds_done_on_a_terminal(loopfs):
    (m,) = loopfs.make(1)
    cmd = "%s -m vmsnap_native bench --mount %s --rounds 3" % (sys.executable, m)
    p = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stdout
    assert "round 3 of 3" in p.stdout and "load: none" in p.stdout


def test_bench_refuses_an_unknown_load(loopfs):
    from .helpers import vmsnap as run_cli
    (m,) = loopfs.make(1)
    p = run_cli("bench", "--mount", m, "--rounds", "1", "--load", "heavy")
    assert p.returncode == 2 and "streaming" in p.stderr


# -- the dirty cap during the presync: applied, and always put back ---------------

def bdi_of(mountpoint):
    dev = os.stat(mountpoint).st_dev
    return "/sys/class/bdi/%d:%d" % (os.major(dev), os.minor(dev))


def bdi_values(mountpoint):
    b = bdi_of(mountpoint)
    with open(b + "/strict_limit") as f1, open(b + "/max_ratio_fine") as f2:
        return int(f1.read()), int(f2.read())


class CapWatch:
    """Polls a device's strict_limit every ms; `seen` once the cap was on."""

    def __init__(self, mountpoint):
        import threading
        self.mountpoint, self.seen, self.done = mountpoint, threading.Event(), False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done:
            if bdi_values(self.mountpoint)[0] == 1:
                self.seen.set()
            time.sleep(0.001)

    def stop(self):
        self.done = True
        self.thread.join()


@pytest.mark.timing
def test_dirty_cap_is_on_during_the_presync_and_off_once_frozen(loopfs):
    busy, quiet = loopfs.make(2, size_mb=256)
    before = {m: bdi_values(m) for m in (busy, quiet)}
    assert before[busy][0] == 0, "the loop device already has strict_limit on"
    w = Streaming(busy)
    watch = CapWatch(busy)
    try:
        s = vmsnap.freeze_filesystems([busy, quiet], timeout=30, dirty_cap_mb=64)
        s.freeze()
        try:
            assert s.all_frozen
            # frozen: the cap has done its work and is already put back
            assert {m: bdi_values(m) for m in (busy, quiet)} == before
        finally:
            s.thaw()
    finally:
        watch.stop()
        w.stop()
    assert watch.seen.is_set(), "the cap was never on"


def test_no_cap_leaves_the_devices_alone(loopfs):
    busy, = loopfs.make(1, size_mb=256)
    w = Streaming(busy)
    watch = CapWatch(busy)
    try:
        with vmsnap.freeze_filesystems([busy], timeout=30, dirty_cap_mb=0) as s:
            assert s.all_frozen
    finally:
        watch.stop()
        w.stop()
    assert not watch.seen.is_set()


@pytest.mark.timing
def test_dirty_cap_put_back_when_the_guardian_is_killed_under_it(loopfs):
    import threading
    busy, = loopfs.make(1, size_mb=256)
    before = bdi_values(busy)
    assert before[0] == 0, "the loop device already has strict_limit on"
    w = Streaming(busy)
    watch = CapWatch(busy)
    outcome = []
    try:
        s = vmsnap.freeze_filesystems([busy], timeout=30, dirty_cap_mb=64)
        s.start()

        def freeze():
            try:
                s.freeze()
                outcome.append("returned")
            except vmsnap.FreezeError as exc:
                outcome.append(str(exc))
        t = threading.Thread(target=freeze)
        t.start()
        assert watch.seen.wait(10), "the cap never came on"
        os.kill(s.guardian_pid, signal.SIGKILL)   # in the presync, cap on
        t.join(30)
        s.thaw()
    finally:
        watch.stop()
        w.stop()
    assert outcome and "guardian died" in outcome[0]
    assert bdi_values(busy) == before   # the controller put it back
    assert not frozen_state(busy)


FREEZER = r"""
import sys, vmsnap_native as v
s = v.freeze_filesystems(sys.argv[1:], timeout=60, dirty_cap_mb=64)
s.start()
print("guardian", s.guardian_pid, flush=True)
s.freeze()
print("frozen", flush=True)
import time; time.sleep(60)
"""


@pytest.mark.timing
def test_dirty_cap_put_back_by_vmsnap_thaw_after_both_die(loopfs):
    busy, = loopfs.make(1, size_mb=256)
    before = bdi_values(busy)
    assert before[0] == 0, "the loop device already has strict_limit on"
    w = Streaming(busy)
    watch = CapWatch(busy)
    ctl = subprocess.Popen([sys.executable, "-c", FREEZER, busy], stdout=subprocess.PIPE,
                           text=True)
    try:
        guardian = int(ctl.stdout.readline().split()[1])
        assert watch.seen.wait(10), "the cap never came on"
        # both die with the cap on: neither can put it back, only the record says
        os.kill(guardian, signal.SIGSTOP)
        os.kill(ctl.pid, signal.SIGKILL)
        ctl.wait()
        os.kill(guardian, signal.SIGKILL)
        time.sleep(0.05)
        assert bdi_values(busy)[0] == 1   # still capped
        vmsnap.thaw_recorded(force=True)
    finally:
        watch.stop()
        w.stop()
        if ctl.poll() is None:
            ctl.kill()
            ctl.wait()
    assert bdi_values(busy) == before


def test_a_dirty_cap_of_a_few_mib_is_refused(loopfs):
    (m,) = loopfs.make(1)
    # the kernel would round it to a ratio of 0: every writer sleeping in 200 ms steps
    with pytest.raises(ValueError, match="dirty_cap_mb must be 0 .*16"):
        vmsnap.freeze_filesystems([m], timeout=10, dirty_cap_mb=4)
