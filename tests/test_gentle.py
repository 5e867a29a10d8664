"""The gentle presync (gentle.py): paced writeback while the pre-script
runs, on real loop filesystems with real writers; and the devices' values
put back when vmsnap (and its guardian) are SIGKILLed during it."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from vmsnap_native import gentle
from vmsnap_native.freeze import FreezeSession, _read_record, runtime_dir

from .conftest import frozen_state
from .helpers import setup_scripts
from .test_faults import _sys_values, start_run
from .test_jit_freeze import CapWatch, Streaming, bdi_values, unflushed_mib

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop filesystems)")

# Writes 1 MiB every 25 ms (about 40 MiB/s) over a 192 MiB file: a writer
# that keeps dirtying pages the kernel would only write back 30 s later.
STEADY = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)
block = b"g" * (1 << 20)
i = 0
while True:
    os.pwrite(fd, block, (i % 192) << 20)
    i += 1
    time.sleep(0.025)
"""

PRE_SCRIPT_S = 3.0


class Steady:
    def __init__(self, mountpoint):
        self.path = os.path.join(mountpoint, "steady")
        self.proc = subprocess.Popen([sys.executable, "-c", STEADY, self.path],
                                     start_new_session=True)
        time.sleep(0.5)

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def left_for_the_freeze(loopfs, mnt, path, use_gentle):
    """MiB still to be written when the freeze would start, after a
    pre-script of PRE_SCRIPT_S: dirty or under writeback in the writer's file
    and in the loop device's image (what its flush writes to the disk), and
    the presync's own flush time."""
    if unflushed_mib(path) is None:
        pytest.skip("no cachestat(2) here")
    img = loopfs.image_of(mnt)
    os.sync()   # both start clean
    g = gentle.GentlePresync([mnt], start_mib=64) if use_gentle else None
    if g is not None:
        g.start()
    try:
        time.sleep(PRE_SCRIPT_S)   # the pre-script
        if g is not None:
            g.stop()
        left = unflushed_mib(path) + unflushed_mib(img)
        s = FreezeSession([mnt], timeout=30, dirty_cap_mb=g.cap_mib if g else 64,
                          dirty_saved=g.saved() if g else None)
        with s.start():
            s.freeze()
        return left, s.mounts[0].sync_ms, (g.summary() if g else None)
    finally:
        if g is not None:
            g.close()


@pytest.mark.timing
def test_the_gentle_presync_leaves_little_for_the_freeze(loopfs):
    """A steady writer (about 40 MiB/s) dirties ~120 MiB during a 3 s
    pre-script; without the gentle phase the freeze finds all of it to
    flush, with it at most what came since its last paced flush (plus the
    flush in progress).  Devices put back afterwards."""
    mnt, = loopfs.make(1, size_mb=256)
    before = bdi_values(mnt)
    w = Steady(mnt)
    try:
        off, off_sync, _ = left_for_the_freeze(loopfs, mnt, w.path, False)
        on, on_sync, summary = left_for_the_freeze(loopfs, mnt, w.path, True)
    finally:
        w.stop()
    print("left at the freeze: %.1f MiB without (presync %s ms), %.1f MiB with the gentle "
          "phase (presync %s ms; %s)" % (off, off_sync, on, on_sync, summary))
    assert off >= 64, "the writer did not dirty enough to tell (%.1f MiB)" % off
    assert summary["flushes"] >= 3, summary
    assert on <= 32, "the gentle phase left %.1f MiB for the freeze (without: %.1f)" % (on, off)
    assert bdi_values(mnt) == before


def test_the_gentle_phase_is_off_without_a_pre_script_or_cap(tmp_path, loopfs):
    """No pre-script: a run never caps the device before its presync (the
    cap is seen only once the session exists); presyncGentle false or
    presyncDirtyCapMiB 0 with a pre-script: no gentle record ever."""
    from vmsnap_native.cycle import make_plan
    mnt, = loopfs.make(1)
    for fields in ({"presyncGentle": False}, {"presyncDirtyCapMiB": 0}):
        cfg = setup_scripts(tmp_path, **fields)
        plan = make_plan(cfg, [mnt], None)
        assert gentle.for_plan(plan) is None, fields
    cfg = setup_scripts(tmp_path)
    plan = make_plan(cfg, [mnt], None)
    g = gentle.for_plan(plan)
    assert g is not None and not g.active   # not begun yet: nothing changed
    assert bdi_values(mnt)[0] == 0
    g.begin()
    assert g.active and os.path.exists(g.record_path)
    assert bdi_values(mnt)[0] == 1
    g.close()
    assert bdi_values(mnt)[0] == 0 and g.record_path is None


def test_the_resume_is_registered_with_the_record_before_the_first_cap(tmp_path, loopfs,
                                                                       monkeypatch):
    """A SIGKILL of vmsnap once the gentle phase has capped a device is undone
    by the reaper only if the resume was registered with the phase's record
    by then: at the registration the record exists and nothing is capped yet
    (before: capped first, registered after, and a SIGKILL in between left
    the device capped)."""
    import vmsnap_native
    from vmsnap_native import process
    mnt, = loopfs.make(1)
    assert bdi_values(mnt)[0] == 0, "the loop device already has strict_limit on"
    seen = []

    def set_resume_command(argv, env=None, wait_for=(), log_file=None):
        if argv is not None and not seen:
            recs = [a for i, a in enumerate(argv) if i and argv[i - 1] == "--thaw-record"]
            seen.append((recs, [os.path.exists(r) for r in recs], bdi_values(mnt)[0]))

    monkeypatch.setattr(process, "set_resume_command", set_resume_command, raising=False)
    cfg = setup_scripts(tmp_path, pre="sleep 0.5")
    res = vmsnap_native.run(config=cfg, mounts=[mnt], log_file=str(tmp_path / "log"))
    assert res.status == "success"
    (recs, exist, strict), = seen
    assert len(recs) == 1 and "-gentle-" in os.path.basename(recs[0]) and exist == [True], recs
    assert strict == 0, "the device was capped before the resume knew its record"
    assert bdi_values(mnt)[0] == 0 and not os.path.exists(recs[0])


def _gentle_records(pid):
    out = []
    for rec in glob.glob(os.path.join(runtime_dir(), "freeze-*-gentle-*.rec")):
        _, sh = _read_record(rec)
        if sh.controller_pid == pid:
            out.append(rec)
    return out


def _wait_restored(mnt, before, timeout=5.0):
    end = time.monotonic() + timeout
    while _sys_values(mnt) != before and time.monotonic() < end:
        time.sleep(0.05)
    after = _sys_values(mnt)
    assert after == before, {k: (before.get(k), v) for k, v in after.items()
                             if before.get(k) != v}


def test_vmsnap_sigkilled_in_the_gentle_phase_the_reaper_restores_the_device(tmp_path, loopfs):
    """`vmsnap run` is SIGKILLed while its pre-script runs and the gentle
    phase caps the device (no guardian exists yet): the reaper's resume puts
    strict_limit and the ratio back from the gentle record within seconds,
    and runs the post-script."""
    busy, = loopfs.make(1, size_mb=256)
    before = _sys_values(busy)
    assert bdi_values(busy)[0] == 0, "the loop device already has strict_limit on"
    marker = tmp_path / "post-ran"
    cfg = setup_scripts(tmp_path, pre="sleep 30", post="touch %s" % marker,
                        timeoutInSeconds=60)
    w = Streaming(busy)
    watch = CapWatch(busy)
    try:
        p = start_run(tmp_path, cfg, [busy], snapshot=["true"])
        assert watch.seen.wait(30), "the cap never came on"
        recs = _gentle_records(p.pid)
        assert recs, "no gentle record of the run"
        time.sleep(0.5)   # a few paced flushes
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        _wait_restored(busy, before)
        end = time.monotonic() + 15
        while not marker.exists() and time.monotonic() < end:
            time.sleep(0.1)
        assert marker.exists(), "the resume did not run the post-script"
        assert not [r for r in recs if os.path.exists(r)], "the gentle record was left"
    finally:
        watch.stop()
        w.stop()
    assert not frozen_state(busy)


def test_thaw_force_during_the_gentle_phase_leaves_its_record_to_the_run(tmp_path, loopfs):
    """`vmsnap thaw --force` while a run's gentle phase paces (nothing is
    frozen) leaves the phase's record alone: the pacing may cap the device
    again, and a SIGKILL of the run after that must still find the record
    the reaper restores the device from.  (Before: the record was removed,
    the device capped again with no record, and stayed capped for good.)"""
    busy, = loopfs.make(1, size_mb=256)
    before = _sys_values(busy)
    assert bdi_values(busy)[0] == 0, "the loop device already has strict_limit on"
    cfg = setup_scripts(tmp_path, pre="sleep 30", timeoutInSeconds=60)
    w = Streaming(busy)
    watch = CapWatch(busy)
    p = None
    try:
        p = start_run(tmp_path, cfg, [busy], snapshot=["true"])
        assert watch.seen.wait(30), "the cap never came on"
        recs = _gentle_records(p.pid)
        assert recs, "no gentle record of the run"
        t = subprocess.run([sys.executable, "-m", "vmsnap_native", "thaw", "--force"],
                           capture_output=True, text=True, timeout=60)
        assert all(os.path.exists(r) for r in recs), t.stdout + t.stderr
        assert "left alone" in t.stdout + t.stderr, t.stdout + t.stderr
        time.sleep(1.0)   # the ramp goes on lowering the cap
        assert bdi_values(busy)[0] == 1
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        _wait_restored(busy, before)
    finally:
        if p is not None and p.poll() is None:
            p.terminate()   # a failed assertion: the run thaws and puts the device back
            p.wait(60)
        watch.stop()
        w.stop()
    assert not frozen_state(busy)


def test_vmsnap_and_guardian_sigkilled_at_the_hand_off_the_reaper_restores(tmp_path, loopfs):
    """The gentle phase hands its caps to the freeze session: vmsnap and its
    guardian both SIGKILLed once the session exists (the guardian's presync
    under way, its record written) -- the device still comes back to its
    values from before the gentle phase, not the gentle phase's caps."""
    busy, = loopfs.make(1, size_mb=256)
    before = _sys_values(busy)
    assert bdi_values(busy)[0] == 0, "the loop device already has strict_limit on"
    cfg = setup_scripts(tmp_path, pre="sleep 1.5", post="exit 0", timeoutInSeconds=60,
                        presyncDirtyCapMiB=64)
    w = Streaming(busy)
    guardian = None
    try:
        p = start_run(tmp_path, cfg, [busy], snapshot=["sleep", "20"])
        end = time.monotonic() + 30
        while guardian is None and time.monotonic() < end:
            for rec in glob.glob(os.path.join(runtime_dir(), "freeze-*.rec")):
                if "gentle" in rec:
                    continue
                try:
                    _, sh = _read_record(rec)
                except ValueError:
                    continue
                if sh.controller_pid == p.pid and sh.guardian_pid:
                    guardian = sh.guardian_pid
            time.sleep(0.005)
        assert guardian, "no record of the run's session"
        assert _gentle_records(p.pid), "the gentle record is gone before the session ended"
        assert bdi_values(busy)[0] == 1
        os.kill(guardian, signal.SIGSTOP)   # it must not see the controller die
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        os.kill(guardian, signal.SIGKILL)
        _wait_restored(busy, before)
    finally:
        w.stop()
    assert not frozen_state(busy)



def test_a_gentle_phase_sigkilled_without_a_resume_vmsnap_thaw_restores(tmp_path, loopfs):
    """A process in its gentle phase SIGKILLed with no reaper's resume (the
    library, no configuration): its record is left, and `vmsnap thaw` puts
    the device back from it and removes it."""
    from .helpers import vmsnap
    mnt, = loopfs.make(1)
    before = _sys_values(mnt)
    code = ("import sys, time\nfrom vmsnap_native import gentle\n"
            "g = gentle.GentlePresync([sys.argv[1]], start_mib=64).start()\n"
            "print(g.record_path, flush=True)\ntime.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code, mnt], stdout=subprocess.PIPE, text=True)
    try:
        rec = p.stdout.readline().strip()
        assert rec and os.path.exists(rec)
        assert bdi_values(mnt)[0] == 1
    finally:
        p.kill()
        p.wait()
    assert bdi_values(mnt)[0] == 1 and os.path.exists(rec)   # nobody put it back yet
    r = vmsnap("thaw")
    assert r.returncode == 0, r.stdout + r.stderr
    assert _sys_values(mnt) == before
    assert not os.path.exists(rec)


# The Python API's run() with a Config that names no file: its pre-script runs
# (and says so), the run is SIGKILLed in it.
API_RUN = r"""
import sys
import vmsnap_native
from vmsnap_native.config import load_config
cfg = load_config(sys.argv[1])
cfg.path = None
vmsnap_native.run(config=cfg, mounts=[sys.argv[2]], snapshot=["true"], log_file=sys.argv[3])
"""


def test_a_sigkilled_api_run_with_a_pathless_config_leaves_no_device_capped(tmp_path, loopfs):
    """No resume can be registered for a Config with no file (the reaper runs
    the post-script from the file), so nothing would put a cap back after a
    SIGKILL: such a run has no gentle phase.  (Before: capped, strict_limit 1
    and the ratio lowered, left so after the kill.)"""
    busy, = loopfs.make(1, size_mb=128)
    before = _sys_values(busy)
    assert bdi_values(busy)[0] == 0, "the loop device already has strict_limit on"
    started = tmp_path / "pre-started"
    cfg = setup_scripts(tmp_path, pre="touch %s; sleep 30" % started, timeoutInSeconds=60)
    p = subprocess.Popen([sys.executable, "-c", API_RUN, cfg, busy, str(tmp_path / "log")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 30
        while not started.exists() and time.monotonic() < end:
            time.sleep(0.05)
        assert started.exists(), "the pre-script never started"
        time.sleep(1.0)   # the gentle phase, if any, has capped by now
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        time.sleep(1.0)
        left = _sys_values(busy)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        from vmsnap_native.freeze import thaw_recorded
        thaw_recorded()   # whatever the outcome: the device put back from a record
    assert left == before, {k: (before.get(k), v) for k, v in left.items() if before.get(k) != v}
    assert not frozen_state(busy)
