"""`vmsnap run --freeze-at FILE` (gate.py): arm, then freeze at the instant
FILE gives; not at all when told too late or never (real loop filesystems,
the real CLI)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from vmsnap_native import gate as gate_mod

from .conftest import frozen_state, root_only
from .helpers import setup_scripts

pytestmark = root_only


def start(tmp_path, mounts, cfg, timeout=20, gate=None):
    """`vmsnap run --freeze-at` in the background; its step notes when it
    started and whether each mount was frozen then."""
    gate = gate or str(tmp_path / "freeze_at")
    step = ("date +%%s.%%N > %s/step_at; for m in %s; do echo $m; done > %s/step_mounts"
            % (tmp_path, " ".join(mounts), tmp_path))
    args = [sys.executable, "-m", "vmsnap_native", "run", "--json", "--log-file", "",
            "--config", cfg, "--freeze-timeout", str(timeout), "--freeze-at", gate]
    for m in mounts:
        args += ["--mount", m]
    args += ["--", "/bin/sh", "-c", step]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL)
    return p, gate


def armed(p, gate, timeout=30):
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate + ".armed"):
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "not armed within %gs" % timeout
        time.sleep(0.02)
    with open(gate + ".armed") as f:
        return float(f.read())


def tell(gate, text):
    with open(gate + ".tmp", "w") as f:
        f.write(text + "\n")
    os.rename(gate + ".tmp", gate)


def result(p, timeout=60):
    out, err = p.communicate(timeout=timeout)
    return json.loads(out), err


def test_armed_it_waits_thawed_and_freezes_at_the_instant(tmp_path, loopfs):
    mounts = loopfs.make(2)
    cfg = setup_scripts(tmp_path, pre="touch %s/pre-ran" % tmp_path)
    p, gate = start(tmp_path, mounts, cfg)
    armed_at = armed(p, gate)
    assert (tmp_path / "pre-ran").exists()
    at = time.time() + 1.5
    tell(gate, "%.6f %.6f" % (at, at + 1.0))
    time.sleep(max(0.0, at - 0.5 - time.time()))
    assert not any(frozen_state(m) for m in mounts), "frozen before the instant"
    res, err = result(p)
    assert (res["status"], res["consistency"]) == ("success", "application"), err
    step_at = float((tmp_path / "step_at").read_text())
    assert armed_at < at <= step_at < at + 1.0, (armed_at, at, step_at)
    assert all(m["frozen"] for m in res["freeze"]["mounts"])
    assert not any(frozen_state(m) for m in mounts)


def test_told_after_the_latest_instant_it_does_not_freeze_and_says_why(tmp_path, loopfs):
    mounts = loopfs.make(1)
    cfg = setup_scripts(tmp_path, post="touch %s/post-ran" % tmp_path)
    p, gate = start(tmp_path, mounts, cfg)
    armed(p, gate)
    now = time.time()
    tell(gate, "%.6f %.6f" % (now - 1.0, now - 0.5))
    res, err = result(p)
    assert [e["code"] for e in res["errors"]] == ["FsFreezeFailed"], res["errors"]
    assert "past the latest useful instant" in res["errors"][0]["message"]
    assert not res["freeze"]["mounts"]            # nothing was frozen
    assert (tmp_path / "post-ran").exists()
    assert (res["status"], res["consistency"]) == ("degraded", "crash")


def test_never_told_it_gives_up_after_the_freeze_timeout(tmp_path, loopfs):
    mounts = loopfs.make(1)
    cfg = setup_scripts(tmp_path, post="touch %s/post-ran" % tmp_path)
    p, gate = start(tmp_path, mounts, cfg, timeout=2)
    armed(p, gate)
    t0 = time.monotonic()
    res, err = result(p)
    assert 1.5 < time.monotonic() - t0 < 10
    assert "never told when to freeze" in res["errors"][0]["message"], res["errors"]
    assert not res["freeze"]["mounts"] and (tmp_path / "post-ran").exists()


def test_told_not_to_freeze(tmp_path, loopfs):
    mounts = loopfs.make(1)
    cfg = setup_scripts(tmp_path)
    p, gate = start(tmp_path, mounts, cfg)
    armed(p, gate)
    tell(gate, "abort the group ended")
    res, err = result(p)
    assert res["errors"][0]["message"] == "told not to freeze: the group ended", res["errors"]
    assert not res["freeze"]["mounts"]


# --- FILE's directory and names: a user who can write there is not obeyed,
# cannot hang the run, nor read a root-only file through it ---------------

NOBODY = 65534


def as_nobody(*argv):
    subprocess.run(["runuser", "-u", "nobody", "--"] + list(argv), check=True)


@pytest.fixture
def shared_dir():
    """A directory anyone can write (0777), reachable by user nobody."""
    d = tempfile.mkdtemp(prefix="vmsnap-gate-", dir="/tmp")
    os.chmod(d, 0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Log:
    def __init__(self):
        self.lines = []

    def info(self, fmt, *a):
        self.lines.append(fmt % a)


def gate_thread(path, limit=3.0):
    """gate.wait_for_instant in a thread (a hang fails the test, not the run)."""
    out = {"log": Log()}

    def run():
        try:
            out["why"] = gate_mod.wait_for_instant(str(path), [], limit, out["log"])
        except BaseException as exc:   # a crash is a failure too: the run would have no result
            out["exc"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def outcome(t, out, timeout=10.0):
    t.join(timeout)
    assert not t.is_alive(), "the gate still waits after %gs" % timeout
    assert "exc" not in out, "the gate crashed: %r" % out.get("exc")
    return out["why"]


def wait_armed(path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(str(path) + ".armed"):
        assert time.monotonic() < deadline, "not armed"
        time.sleep(0.01)


def test_a_fifo_planted_by_a_user_does_not_hang_the_run(tmp_path, loopfs, shared_dir):
    mounts = loopfs.make(1)
    cfg = setup_scripts(tmp_path, post="touch %s/post-ran" % tmp_path)
    gate = os.path.join(shared_dir, "gate")
    as_nobody("mkfifo", gate)
    as_nobody("mkfifo", gate + ".armed.tmp")
    t0 = time.monotonic()
    p, _ = start(tmp_path, mounts, cfg, timeout=2, gate=gate)
    try:
        res, err = result(p, timeout=30)
    finally:
        if p.poll() is None:   # hung: SIGTERM runs its post-script and ends it
            p.terminate()
            p.wait(timeout=30)
    assert time.monotonic() - t0 < 15
    assert [e["code"] for e in res["errors"]] == ["FsFreezeFailed"], (res["errors"], err)
    assert "not frozen" in res["errors"][0]["message"]
    assert "writable by" in res["errors"][0]["message"]
    assert not res["freeze"]["mounts"] and (tmp_path / "post-ran").exists()


def test_a_fifo_at_armed_tmp_does_not_hang_arming(tmp_path):
    """Whatever the directory's check says, arming itself never opens a fixed
    temp name (a root-only directory with a FIFO at the old temp name)."""
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    os.mkfifo(d / "gate.armed.tmp")
    os.mkfifo(d / "gate.told.tmp")
    t, out = gate_thread(d / "gate", limit=5)
    wait_armed(d / "gate")
    (d / "gate.tmp").write_text("abort stop\n")
    os.rename(d / "gate.tmp", d / "gate")
    assert outcome(t, out) == "told not to freeze: stop"


@pytest.mark.parametrize("plant", ["fifo", "symlink", "devzero", "users_file", "hardlink"])
def test_file_of_the_wrong_kind_is_refused_without_hanging_or_leaking(tmp_path, plant):
    """In a root-only directory (the directory check passed), FILE must still
    be a plain file of root's: a FIFO, a symlink (to a root-only secret, to
    /dev/zero), another user's file or a hard link are refused, at once."""
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    secret = tmp_path / "secret"
    secret.write_text("root:$6$SECRETHASH:19000\n")
    secret.chmod(0o600)
    g = d / "gate"
    t0 = time.time()
    line = "%.6f %.6f\n" % (t0 + 1, t0 + 2)
    if plant == "fifo":
        os.mkfifo(g)
    elif plant == "symlink":
        os.symlink(secret, g)
    elif plant == "devzero":
        os.symlink("/dev/zero", g)
    elif plant == "users_file":
        g.write_text(line)
        os.chown(g, NOBODY, NOBODY)
    else:
        (tmp_path / "other").write_text(line)
        os.link(tmp_path / "other", g)
    t, out = gate_thread(g, limit=3)
    why = outcome(t, out, timeout=2.5)
    assert why is not None and "not frozen" in why, why
    assert "SECRETHASH" not in why and "SECRETHASH" not in " ".join(out["log"].lines)


def test_a_file_planted_by_a_user_is_not_obeyed(tmp_path, shared_dir):
    g = os.path.join(shared_dir, "gate")
    now = time.time()
    as_nobody("sh", "-c", "printf '%.6f %.6f\\n' > %s" % (now + 0.5, now + 1.5, g))
    t, out = gate_thread(g, limit=3)
    why = outcome(t, out)
    assert why is not None and "writable by" in why and "not frozen" in why, why
    assert not os.path.exists(g + ".armed")   # nothing written in such a directory


def test_a_non_utf8_file_gives_a_reason_not_a_crash(tmp_path):
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    (d / "gate").write_bytes(b"\xff\xfe SECRET \x00\n")
    t, out = gate_thread(d / "gate")
    why = outcome(t, out)
    assert why is not None and "SECRET" not in why and "not frozen" in why, why


def test_abort_reason_is_cut_and_printable(tmp_path):
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    (d / "gate").write_text("abort " + "x\x1b" * 500 + "\n")
    t, out = gate_thread(d / "gate")
    why = outcome(t, out)
    assert why.startswith("told not to freeze: x?x?") and len(why) < 260 and "\x1b" not in why


# --- the instant: finite, within the arm's bound, on the monotonic clock,
# cancellable -------------------------------------------------------------

def tell_in(d, text):
    (d / "gate.tmp").write_text(text + "\n")
    os.rename(d / "gate.tmp", d / "gate")


@pytest.mark.parametrize("line", ["nan nan", "inf inf", "-inf inf", "1e400 1e400", "FAR"])
def test_an_instant_not_finite_or_past_the_bound_is_refused(tmp_path, line):
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    t, out = gate_thread(d / "gate", limit=3)
    wait_armed(d / "gate")
    if line == "FAR":   # finite, but after the arm gives up: the wait must stay bounded
        now = time.time()
        line = "%.6f %.6f" % (now + 3600, now + 3601)
    tell_in(d, line)
    t0 = time.monotonic()
    why = outcome(t, out, timeout=2.0)
    assert time.monotonic() - t0 < 1.0
    assert why is not None and "not frozen" in why, why


@pytest.mark.parametrize("shift", [-10.0, +10.0, -0.2])
def test_a_wall_clock_step_while_waiting_means_no_freeze(tmp_path, monkeypatch, shift):
    """NTP steps the clock while the host waits for T: it must neither freeze
    at the stepped clock's T (late or early in real time) nor at all."""
    real_time = time.time
    step = [0.0]

    class Clock:
        def __getattr__(self, name):
            return getattr(time, name)

        def time(self):
            return real_time() + step[0]

    monkeypatch.setattr(gate_mod, "time", Clock())
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    t, out = gate_thread(d / "gate", limit=30)
    wait_armed(d / "gate")
    at = real_time() + 1.0
    tell_in(d, "%.6f %.6f" % (at, at + 0.25))
    time.sleep(0.3)
    step[0] = shift
    why = outcome(t, out, timeout=3.0)
    assert real_time() < at + 1.0, "waited on the stepped wall clock"
    assert why is not None and "clock" in why, why


def test_no_step_freezes_at_the_instant_on_time(tmp_path):
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    t, out = gate_thread(d / "gate", limit=30)
    wait_armed(d / "gate")
    at = time.time() + 0.5
    tell_in(d, "%.6f %.6f" % (at, at + 0.5))
    assert outcome(t, out) is None
    assert at <= time.time() < at + 0.5
    told_at, instant = map(float, (d / "gate.told").read_text().split())
    assert instant == pytest.approx(at, abs=1e-6) and told_at < at


def test_a_told_host_is_cancelled_by_a_rewritten_file(tmp_path):
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    t, out = gate_thread(d / "gate", limit=30)
    wait_armed(d / "gate")
    at = time.time() + 2.0
    tell_in(d, "%.6f %.6f" % (at, at + 0.5))
    time.sleep(0.5)
    tell_in(d, "abort the group was released before this host froze")
    why = outcome(t, out)
    assert time.time() < at, "it waited for the instant"
    assert why is not None and "cancelled" in why and "released before" in why, why


def test_run_told_nan_reports_why_and_runs_the_post_script(tmp_path, loopfs):
    mounts = loopfs.make(1)
    cfg = setup_scripts(tmp_path, post="touch %s/post-ran" % tmp_path)
    p, gate = start(tmp_path, mounts, cfg, timeout=3)
    armed(p, gate)
    tell(gate, "nan nan")
    res, err = result(p, timeout=20)
    assert [e["code"] for e in res["errors"]] == ["FsFreezeFailed"], (res["errors"], err)
    assert "not a finite time" in res["errors"][0]["message"]
    assert not res["freeze"]["mounts"] and (tmp_path / "post-ran").exists()


@pytest.mark.parametrize("after_freeze", [None, -1.0])
def test_a_clock_step_during_the_freeze_is_handed_to_the_step(tmp_path, loopfs, monkeypatch,
                                                              after_freeze):
    """The instant's check sees no step; the wall clock then steps back 1 s
    while the filesystems freeze (wall minus monotonic, as gate.py reads it,
    moves): the snapshot step gets VMSNAP_CLOCK_MOVED with the move and its
    allowance, and the run warns.  With no step the move is within it.  (The
    machine's clock is not stepped: only what the gate reads of it.)"""
    import vmsnap_native
    mounts = loopfs.make(1)
    cfg = setup_scripts(tmp_path)
    real = gate_mod._skew
    reads = []

    def skew():
        reads.append(real())
        # arming and the instant's check read the clock as it is; the read once
        # frozen sees the step
        return reads[-1] + ((after_freeze or 0.0) if len(reads) > 2 else 0.0)

    monkeypatch.setattr(gate_mod, "_skew", skew)
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    gate = str(d / "gate")

    def teller():
        end = time.monotonic() + 30
        while not os.path.exists(gate + ".armed") and time.monotonic() < end:
            time.sleep(0.02)
        at = time.time() + 0.3
        tell(gate, "%.6f %.6f" % (at, at + 1.0))

    t = threading.Thread(target=teller, daemon=True)
    t.start()
    out = tmp_path / "moved"
    res = vmsnap_native.run(config=cfg, mounts=mounts, freeze_at=gate, log_file="",
                            snapshot=["/bin/sh", "-c", 'printf "%%s" "$VMSNAP_CLOCK_MOVED" > %s'
                                      % out])
    t.join(5)
    assert res.status == "success" and res.freeze.mounts[0]["frozen"], res.to_json()
    assert len(reads) == 3, reads
    moved, allowed = map(float, out.read_text().split())
    assert 0.05 <= allowed < 0.06
    warned = [w for w in res.warnings if "clock step during the freeze" in w]
    if after_freeze is None:
        assert abs(moved) < allowed and not warned, (moved, res.warnings)
    else:
        assert moved == pytest.approx(after_freeze, abs=0.01) and warned, (moved, res.warnings)


def test_the_callers_clock_moved_never_reaches_the_step(tmp_path, loopfs, monkeypatch):
    """VMSNAP_CLOCK_MOVED is the run's word only: a value in the caller's
    environment (a run not armed) is not handed on as if measured."""
    import vmsnap_native
    mounts = loopfs.make(1)
    monkeypatch.setenv("VMSNAP_CLOCK_MOVED", "+0.000000 9.0")
    out = tmp_path / "moved"
    res = vmsnap_native.run(config=setup_scripts(tmp_path), mounts=mounts, log_file="",
                            snapshot=["/bin/sh", "-c", 'printf "%%s" "${VMSNAP_CLOCK_MOVED-unset}" > %s'
                                      % out])
    assert res.status == "success", res.to_json()
    assert out.read_text() == "unset"
