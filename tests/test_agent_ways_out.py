"""Every way out of an agent's snapshot session keeps `vmsnap run`'s
promises: the first call killed, the session's process killed, a late or
stale call, an agent that never thaws, a thaw from outside, a freeze that
fails.  Each on loop filesystems only, the agent's calls made as the agent
makes them (argv, stdin /dev/null)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from . import test_agents
from .conftest import frozen_state, root_only, thawed_soon
from .helpers import write_script
from .test_agents import alive, hook, log_results, marks, stamping_config, wait_for, wrapper

runtime = test_agents.runtime   # the fixture: this test's own runtime directory

pytestmark = root_only


def session(runtime_dir, agent) -> dict:
    with open(os.path.join(runtime_dir, "hook-%s.json" % agent)) as f:
        return json.load(f)


def hooks_dir(tmp_path, slow_freeze=0):
    """A hooks directory with one hook that logs its calls (and sleeps in its freeze)."""
    d = tmp_path / "hooks.d"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    calls = tmp_path / "hook-calls"
    write_script(d / "10-app", 'echo "$1" >> %s\n[ "$1" = freeze ] && sleep %s\nexit 0'
                 % (calls, slow_freeze))
    return str(d), calls


def lines(path) -> list:
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []


def no_holder_left(runtime_dir, agent, timeout=30) -> bool:
    path = os.path.join(runtime_dir, "hook-%s.json" % agent)
    return wait_for(lambda: not os.path.exists(path), timeout)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_first_call_killed_after_the_pre_script_runs_thaw_hooks_and_post(
        tmp_path, loopfs, runtime, sig):
    """The agent kills `hook gce pre` on its own timeout while a hook's
    freeze runs: the session ends as a stopped run does."""
    mounts = loopfs.make(1)
    hdir, calls = hooks_dir(tmp_path, slow_freeze=30)
    config, mark = stamping_config(tmp_path, mounts, hooksDirectory=hdir, timeoutInSeconds=60)
    p = subprocess.Popen([wrapper(tmp_path, "gce", config), "pre", "disk-1"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert wait_for(lambda: lines(calls) == ["freeze"], 30), lines(calls)
    assert "pre" in marks(mark)
    p.send_signal(sig)
    p.communicate(timeout=30)
    assert wait_for(lambda: len(marks(mark).get("post", [])) == 1, 30), marks(mark)
    assert wait_for(lambda: lines(calls) == ["freeze", "thaw"], 30), lines(calls)
    assert no_holder_left(runtime, "gce")
    assert not frozen_state(mounts[0])
    res = log_results(tmp_path)[-1]
    assert res["status"] == "failed" and res["snapshot"] is None, res
    # no second post-script from the agent's later call
    assert hook(tmp_path, "gce", config, "post", "disk-1").returncode in (0, 1)
    time.sleep(0.3)
    assert len(marks(mark)["post"]) == 1


def test_session_process_sigkilled_while_frozen_guardian_thaws_and_reaper_resumes(
        tmp_path, loopfs, runtime):
    mounts = loopfs.make(1)
    hdir, calls = hooks_dir(tmp_path)
    config, mark = stamping_config(tmp_path, mounts, hooksDirectory=hdir)
    assert hook(tmp_path, "gce", config, "pre", "disk-1").returncode == 0
    assert frozen_state(mounts[0])
    holder = session(runtime, "gce")["watchdog"]["pid"]
    os.kill(holder, signal.SIGKILL)
    assert thawed_soon(mounts, 5)
    # the post-script writes on the filesystem: it ran after the thaw, once
    assert wait_for(lambda: len(marks(mark).get("post", [])) == 1, 30), marks(mark)
    assert (mounts[0] + "/post-was-here") and os.path.exists(mounts[0] + "/post-was-here")
    assert wait_for(lambda: lines(calls) == ["freeze", "thaw"], 30), lines(calls)
    p = hook(tmp_path, "gce", config, "post", "disk-1")
    assert p.returncode == 1 and "not consistent" in p.stderr, p.stderr
    time.sleep(0.3)
    assert len(marks(mark)["post"]) == 1 and lines(calls) == ["freeze", "thaw"]


def test_a_dead_sessions_late_calls_never_touch_another_runs_freeze(tmp_path, loopfs, runtime):
    """Its process SIGKILLed, the session is gone; a lease is then taken on
    another filesystem.  Neither a new first call nor the old session's late
    last call may thaw that lease or run a script inside it."""
    app, leased = loopfs.make(2)
    config, mark = stamping_config(tmp_path, [app])
    assert hook(tmp_path, "qemu-ga", config, "freeze").returncode == 0
    holder = session(runtime, "qemu-ga")["watchdog"]["pid"]
    os.kill(holder, signal.SIGKILL)
    assert wait_for(lambda: len(marks(mark).get("post", [])) == 1, 30)   # the reaper's resume
    assert wait_for(lambda: not alive(holder), 10)
    lease = subprocess.run([sys.executable, "-m", "vmsnap_native", "freeze", "--timeout", "60",
                            "--mount", leased], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
    try:
        assert lease.returncode == 0, lease.stderr
        assert frozen_state(leased)
        p = hook(tmp_path, "qemu-ga", config, "freeze")
        assert p.returncode != 0 and "AnotherRunInProgress" in p.stderr, p.stderr
        p = hook(tmp_path, "qemu-ga", config, "thaw")
        assert p.returncode == 1 and "not consistent" in p.stderr, p.stderr
        time.sleep(0.5)
        assert frozen_state(leased)
        got = marks(mark)
        assert len(got["pre"]) == 1 and len(got["post"]) == 1, got
    finally:
        subprocess.run([sys.executable, "-m", "vmsnap_native", "thaw"], capture_output=True,
                       timeout=60)
    assert not frozen_state(leased)


@pytest.mark.parametrize("then", [None, signal.SIGKILL])
def test_holder_sigterm_before_the_agents_own_freeze_thaws_it_by_the_deadline(
        tmp_path, loopfs, runtime, then):
    """qemu-ga's `freeze` call got its answer; the session's process gets
    SIGTERM before qemu-ga's own FIFREEZE.  The session ends at once (thaw,
    post-script), then qemu-ga freezes anyway and its host never sends
    `thaw`: what it froze is thawed by the session's deadline (by the
    session's process, or, SIGKILLed as it waits, by the reaper from the
    agent's record), and the post-script is not run again."""
    mounts = loopfs.make(2)
    config, mark = stamping_config(tmp_path, mounts, freezeTimeoutInSeconds=3)
    p = hook(tmp_path, "qemu-ga", config, "freeze")
    answered = time.monotonic()   # the session's step (and its deadline) began before this
    assert p.returncode == 0, p.stderr
    holder = session(runtime, "qemu-ga")["watchdog"]["pid"]
    os.kill(holder, signal.SIGTERM)
    try:
        assert wait_for(lambda: len(marks(mark).get("post", [])) == 1, 30), marks(mark)
        for m in reversed(mounts):   # qemu-ga's FIFREEZE, after the session ended
            subprocess.run(["fsfreeze", "-f", m], check=True, timeout=30)
        assert time.monotonic() < answered + 3, "too slow to freeze before the deadline"
        if then is not None:
            os.kill(holder, then)
        assert thawed_soon(mounts, answered + 3 + 2.0 - time.monotonic()), \
            "frozen %.1fs after the 3s deadline's start" % (time.monotonic() - answered)
    finally:
        for m in mounts:
            subprocess.run(["fsfreeze", "-u", m], capture_output=True)
    assert wait_for(lambda: not alive(holder), 10)
    assert no_holder_left(runtime, "qemu-ga")
    p = hook(tmp_path, "qemu-ga", config, "thaw")
    assert p.returncode == 1 and "not consistent" in p.stderr, p.stderr
    time.sleep(0.3)
    got = marks(mark)
    assert len(got["pre"]) == 1 and len(got["post"]) == 1, got
    if then is None:
        res = log_results(tmp_path)
        assert res and res[-1]["status"] == "failed", res
    else:   # what it held of its log went with it; the resume says what it thawed
        log = (tmp_path / "vmsnap.log").read_text()
        assert "resume: thaw: %s: thawed" % mounts[0] in log, log


def test_holder_sigkilled_as_it_waits_then_the_agent_freezes_thawed_by_the_deadline(
        tmp_path, loopfs, runtime):
    """As above, but the session's process is SIGKILLed (systemd's final
    kill) as it waits, before qemu-ga's own FIFREEZE: the reaper's resume
    thaws from the agent's record at the session's deadline, not at once,
    so a freeze the agent makes after the kill is thawed too."""
    mounts = loopfs.make(1)
    config, mark = stamping_config(tmp_path, mounts, freezeTimeoutInSeconds=4)
    p = hook(tmp_path, "qemu-ga", config, "freeze")
    answered = time.monotonic()
    assert p.returncode == 0, p.stderr
    holder = session(runtime, "qemu-ga")["watchdog"]["pid"]
    os.kill(holder, signal.SIGTERM)
    try:
        assert wait_for(lambda: len(marks(mark).get("post", [])) == 1, 30), marks(mark)
        time.sleep(0.3)
        os.kill(holder, signal.SIGKILL)
        assert wait_for(lambda: not alive(holder), 10)
        time.sleep(0.5)   # a resume that thawed at once has done so by now
        subprocess.run(["fsfreeze", "-f", mounts[0]], check=True, timeout=30)
        assert time.monotonic() < answered + 4, "too slow to freeze before the deadline"
        assert thawed_soon(mounts, answered + 4 + 2.0 - time.monotonic()), \
            "frozen %.1fs after the 4s deadline's start" % (time.monotonic() - answered)
    finally:
        subprocess.run(["fsfreeze", "-u", mounts[0]], capture_output=True)
    got = marks(mark)
    assert len(got["pre"]) == 1 and len(got["post"]) == 1, got


@pytest.fixture
def nested_and_one(loopfs):
    (outer,) = loopfs.make(1, size_mb=96)
    (inner,) = loopfs.make(1, parent=outer)
    (other,) = loopfs.make(1)
    try:
        yield outer, inner, other
    finally:
        for m in (outer, inner, other):
            subprocess.run(["fsfreeze", "-u", m], capture_output=True)


def test_agent_that_never_thaws_every_filesystem_it_froze_is_thawed_parents_first(
        tmp_path, runtime, nested_and_one):
    """The configuration selects one filesystem; the agent froze three (an
    image on another among them, frozen children first, as agents do) and
    never calls `thaw`.  At the deadline vmsnap thaws all three, the
    parent before its child (a child first would hang in the kernel)."""
    outer, inner, other = nested_and_one
    config, mark = stamping_config(tmp_path, [other], freezeTimeoutInSeconds=2)
    assert hook(tmp_path, "qemu-ga", config, "freeze").returncode == 0
    for m in (inner, outer, other):   # the agent's freeze
        subprocess.run(["fsfreeze", "-f", m], check=True, timeout=30)
    assert thawed_soon([outer, other], 20)
    assert thawed_soon([inner], 5)
    assert wait_for(lambda: len(marks(mark).get("post", [])) == 1, 30)
    assert no_holder_left(runtime, "qemu-ga")
    res = log_results(tmp_path)[-1]
    assert res["status"] == "failed" and "FsFreezeTimeout" in [e["code"] for e in res["errors"]]
    p = hook(tmp_path, "qemu-ga", config, "thaw")
    assert p.returncode == 1 and "not consistent" in p.stderr, p.stderr


def test_thaw_from_outside_during_a_gce_session_is_not_consistent(tmp_path, loopfs, runtime):
    mounts = loopfs.make(2)
    config, mark = stamping_config(tmp_path, mounts)
    p = hook(tmp_path, "gce", config, "pre", "disk-1")
    assert p.returncode == 0, p.stderr
    assert "frozen by vmsnap" in p.stderr and "the agent freezes" not in p.stderr, p.stderr
    subprocess.run(["fsfreeze", "-u", mounts[1]], check=True)
    p = hook(tmp_path, "gce", config, "post", "disk-1")
    assert p.returncode == 1, p.stderr
    res = log_results(tmp_path)[-1]
    assert res["status"] == "failed" and res["consistency"] is None, res
    assert "FsThawedEarly" in [e["code"] for e in res["errors"]], res
    assert len(marks(mark)["post"]) == 1 and not frozen_state(mounts[0])


def test_gce_freeze_failure_with_continue_is_crash_consistent(tmp_path, loopfs, runtime):
    good, bad = loopfs.make(2)
    from .test_cycle import shut_down
    shut_down(bad)
    config, mark = stamping_config(tmp_path, [good, bad], continueBackupOnFailure=True)
    p = hook(tmp_path, "gce", config, "pre", "disk-1")
    assert p.returncode == 0, p.stderr
    assert not frozen_state(good)
    p = hook(tmp_path, "gce", config, "post", "disk-1")
    res = log_results(tmp_path)[-1]
    assert res["consistency"] == "crash" and res["status"] == "degraded", res
    assert "FsFreezeFailed" in [e["code"] for e in res["errors"]], res
    assert len(marks(mark)["post"]) == 1


def test_vmsnap_thaw_force_during_a_qemu_ga_snapshot_is_124(tmp_path, loopfs, runtime):
    """`vmsnap thaw` refuses the session's freeze; `--force` thaws what the
    agent froze, and the session's verdict names that thaw."""
    mounts = loopfs.make(1)
    config, mark = stamping_config(tmp_path, mounts)
    assert hook(tmp_path, "qemu-ga", config, "freeze").returncode == 0
    subprocess.run(["fsfreeze", "-f", mounts[0]], check=True)   # the agent's freeze
    thaw = [sys.executable, "-m", "vmsnap_native", "thaw"]
    p = subprocess.run(thaw, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and frozen_state(mounts[0]), p.stderr
    p = subprocess.run(thaw + ["--force"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and not frozen_state(mounts[0]), p.stderr
    p = hook(tmp_path, "qemu-ga", config, "thaw")
    assert p.returncode == 1, p.stderr
    res = log_results(tmp_path)[-1]
    assert res["status"] == "failed" and "FsThawedEarly" in [e["code"] for e in res["errors"]]
    assert "thaw --force" in " ".join(e["message"] for e in res["errors"])
    assert len(marks(mark)["post"]) == 1
