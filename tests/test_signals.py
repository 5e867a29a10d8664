"""Every way out resumes the application (issue 11 items 1 and 2), with real
signals on real loop filesystems: a stop signal to `vmsnap run` at each
phase, an exception after the pre-script, a signal to the guardian during
the snapshot step, and the reaper's resume command after a SIGKILL."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import vmsnap_native
from vmsnap_native import process

from .conftest import frozen_state, root_only, thawed_soon
from .helpers import (
    frozen_or_thawed,
    guardian_of,
    in_fifreeze,
    pin_freeze,
    setup_scripts,
    unpin_freeze,
    write_script,
)

pytestmark = root_only


def wait_for(path, timeout=30.0):
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise AssertionError("%s never appeared" % path)
        time.sleep(0.02)


def start_run(tmp_path, cfg, mounts, snapshot=(), extra=()):
    """`vmsnap run --json` in the background, with its own runtime directory."""
    args = [sys.executable, "-m", "vmsnap_native", "run", "--json", "--config", str(cfg),
            "--log-file", str(tmp_path / "vmsnap.log")]
    for m in mounts:
        args += ["--mount", m]
    args += list(extra)
    if snapshot:
        args += ["--", *snapshot]
    env = dict(os.environ, VMSNAP_RUNTIME_DIR=str(tmp_path / "run"))
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, stdin=subprocess.DEVNULL)


def finish(proc, timeout=60):
    out, err = proc.communicate(timeout=timeout)
    try:
        return proc.returncode, json.loads(out), err
    except ValueError:
        raise AssertionError("no result on stdout (exit %s):\n%s\nstderr:\n%s"
                             % (proc.returncode, out, err)) from None


def codes(res):
    return [e["code"] for e in res["errors"]]


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def gone_soon(pid, timeout=5.0):
    end = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def hook(tmp_path, log):
    """A hook that notes its calls in LOG."""
    d = tmp_path / "hooks"
    d.mkdir(mode=0o755, exist_ok=True)
    write_script(d / "10-app", 'echo "$1" >> %s' % log)
    return str(d)


def wait_in_step(tmp_path, name):
    """A snapshot step (or script body) that says it started, then waits (at most 30 s)."""
    return "touch %s; i=0; while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done" % (
        tmp_path / name)


# -- a stop signal to `vmsnap run` ------------------------------------------------

@pytest.mark.timing
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_during_the_snapshot_thaws_at_once_then_thaw_hooks_and_post(tmp_path, loopfs,
                                                                           sig):
    (m,) = loopfs.make(1)
    calls = tmp_path / "hook-calls"
    # the post-script sees the filesystem thawed: it can freeze it (and thaws it again)
    cfg = setup_scripts(tmp_path, post="touch %s; fsfreeze -f %s && fsfreeze -u %s && touch %s"
                        % (tmp_path / "post-ran", m, m, tmp_path / "post-saw-it-thawed"),
                        hooksDirectory=hook(tmp_path, calls))
    proc = start_run(tmp_path, cfg, [m], snapshot=["sh", "-c", wait_in_step(tmp_path, "snap")])
    wait_for(tmp_path / "snap")
    assert frozen_state(m)
    t0 = time.monotonic()
    proc.send_signal(sig)
    rc, res, err = finish(proc)
    # thawed by vmsnap itself before it exited, not by the guardian a little later
    assert not frozen_state(m)
    assert time.monotonic() - t0 < 20
    assert rc == 1 and res["status"] == "failed" and res["consistency"] is None, err
    assert codes(res)[-1] == "Interrupted" and res["errors"][-1]["number"] == 402
    assert signal.Signals(sig).name in res["errors"][-1]["message"]
    assert (tmp_path / "post-ran").exists(), "the post-script must run"
    assert (tmp_path / "post-saw-it-thawed").exists(), "the post-script ran before the thaw"
    assert calls.read_text().split() == ["freeze", "thaw"]
    assert res["snapshot"]["signal"] is None or res["snapshot"]["exit_code"] != 0


@pytest.mark.timing
def test_signal_during_the_pre_script_stops_it_and_runs_the_post_script(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, pre="echo $$ > %s; %s" % (tmp_path / "pre.pid",
                                                          wait_in_step(tmp_path, "pre")),
                        post="touch %s" % (tmp_path / "post-ran"))
    proc = start_run(tmp_path, cfg, [m], snapshot=["touch", str(tmp_path / "snap")])
    wait_for(tmp_path / "pre")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc, res, err = finish(proc)
    assert time.monotonic() - t0 < 20, "the pre-script was waited for"
    assert rc == 1 and res["status"] == "failed" and codes(res) == ["Interrupted"], err
    # killed: gone within moments (SIGKILL's delivery is not instant on a loaded machine)
    assert gone_soon(int((tmp_path / "pre.pid").read_text())), "the pre-script outlived the run"
    assert (tmp_path / "post-ran").exists()
    assert not (tmp_path / "snap").exists() and res["freeze"]["mounts"] == []
    assert not frozen_state(m)


@pytest.mark.parametrize("where", ["spawn", "wait"])
def test_a_stop_signal_between_the_spawn_and_the_wait_leaves_nothing_running(tmp_path, loopfs,
                                                                            monkeypatch, where):
    """The window a loaded machine opens: the pre-script already runs but the
    run is not yet waiting for it when SIGTERM comes.  Made exact here: the
    run (in this process) sends itself SIGTERM, and its handler raises
    there: "spawn", right after the child's registration with the reaper
    (inside the constructor); "wait", once the constructor has returned,
    before the wait's own guard.  The pre-script must not outlive the run,
    and the post-script still runs."""
    (m,) = loopfs.make(1)
    sent = []

    def sigterm_once(pid):
        if not sent:
            sent.append(pid)
            os.kill(os.getpid(), signal.SIGTERM)   # the handler raises Interrupted here

    if where == "spawn":
        real_watch = process._watch

        def watch_then_sigterm(proc):
            real_watch(proc)
            sigterm_once(proc.pid)

        monkeypatch.setattr(process, "_watch", watch_then_sigterm)
    else:
        real_wait = process.Process.wait

        def sigterm_then_wait(self, *args, **kwargs):
            sigterm_once(self.pid)
            return real_wait(self, *args, **kwargs)

        monkeypatch.setattr(process.Process, "wait", sigterm_then_wait)
    cfg = setup_scripts(tmp_path, pre="echo $$ > %s; %s" % (tmp_path / "pre.pid",
                                                          wait_in_step(tmp_path, "pre")),
                        post="touch %s" % (tmp_path / "post-ran"))
    res = vmsnap_native.run(config=cfg, mounts=[m], log_file=str(tmp_path / "log"))
    pid = sent[0]
    try:
        assert res.status == "failed" and [e.code for e in res.errors] == ["Interrupted"]
        assert gone_soon(pid), "the pre-script outlived the run"
        assert (tmp_path / "post-ran").exists()
        assert not frozen_state(m)
    finally:
        if alive(pid):
            os.killpg(pid, signal.SIGKILL)


def test_signal_during_a_hooks_freeze_call_still_gives_it_its_thaw(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    calls = tmp_path / "hook-calls"
    d = tmp_path / "hooks"
    d.mkdir(mode=0o755)
    write_script(d / "10-app", 'echo "$1" >> %s; [ "$1" = thaw ] || { %s; }'
                 % (calls, wait_in_step(tmp_path, "hook-freezing")))
    cfg = setup_scripts(tmp_path, post="touch %s" % (tmp_path / "post-ran"),
                        hooksDirectory=str(d))
    proc = start_run(tmp_path, cfg, [m])
    wait_for(tmp_path / "hook-freezing")
    proc.send_signal(signal.SIGHUP)
    rc, res, err = finish(proc)
    assert rc == 1 and codes(res) == ["Interrupted"], err
    assert calls.read_text().split() == ["freeze", "thaw"]
    assert (tmp_path / "post-ran").exists()
    assert res["freeze"]["mounts"] == [] and not frozen_state(m)


def test_signal_during_the_post_script_lets_it_finish(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, post="touch %s; sleep 1; touch %s"
                        % (tmp_path / "post-started", tmp_path / "post-done"))
    proc = start_run(tmp_path, cfg, [m])
    wait_for(tmp_path / "post-started")
    proc.send_signal(signal.SIGINT)
    rc, res, err = finish(proc)
    assert (tmp_path / "post-done").exists(), "the post-script was cut short"
    assert res["post_script"]["exit_code"] == 0
    assert rc == 1 and res["status"] == "failed" and codes(res) == ["Interrupted"], err


def test_an_exception_after_the_pre_script_still_thaws_and_runs_the_post_script(tmp_path,
                                                                                loopfs):
    (m,) = loopfs.make(1)
    bg = tmp_path / "bg"
    # the pre-script leaves a process (a lock session, say) that the post-script ends
    cfg = setup_scripts(tmp_path, pre="sleep 60 & echo $! > %s" % bg,
                        post="kill -0 $(cat %s) && touch %s; kill $(cat %s)"
                        % (bg, tmp_path / "post-saw-it", bg))
    with pytest.raises(TypeError):
        vmsnap_native.run(config=cfg, snapshot=42, mounts=[m])   # 42: neither argv nor callable
    assert not frozen_state(m)
    # the post-script ran, and the pre-script's process was still there for it to end
    assert (tmp_path / "post-saw-it").exists()


# -- an early thaw: the snapshot is not trusted -----------------------------------

def guardian_pid(runtime_dir):
    from vmsnap_native.freeze import _read_record
    end = time.monotonic() + 10
    while time.monotonic() < end:
        for path in glob.glob(os.path.join(runtime_dir, "freeze-*.rec")):
            buf, record = _read_record(path)   # RECORD points into BUF: both held here
            if record.guardian_pid > 0:   # not the gentle presync's record (no guardian):
                return int(record.guardian_pid)   # os.kill(0) would signal our own group
        time.sleep(0.02)
    raise AssertionError("no freeze record in %s" % runtime_dir)


def test_a_signal_to_the_guardian_during_the_snapshot_is_124_and_post_runs(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, post="touch %s" % (tmp_path / "post-ran"))
    go = tmp_path / "go"
    step = "touch %s; while [ ! -e %s ]; do sleep 0.05; done" % (tmp_path / "snap", go)
    proc = start_run(tmp_path, cfg, [m], snapshot=["timeout", "30", "sh", "-c", step])
    try:
        wait_for(tmp_path / "snap")
        os.kill(guardian_pid(str(tmp_path / "run")), signal.SIGUSR1)
        assert thawed_soon([m], timeout=10)   # thawed while the step goes on
    finally:
        go.touch()
    rc, res, err = finish(proc)
    assert rc == 1 and res["status"] == "failed" and res["consistency"] is None, err
    assert codes(res) == ["FsThawedEarly"] and res["errors"][0]["number"] == 124
    assert "signal" in res["errors"][0]["message"]
    assert res["snapshot"]["exit_code"] == 0   # the step itself went well: not trusted anyway
    assert (tmp_path / "post-ran").exists()


def test_vmsnap_thaw_from_another_shell_during_the_snapshot_is_124(tmp_path, loopfs):
    from .helpers import vmsnap
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, post="touch %s" % (tmp_path / "post-ran"))
    go = tmp_path / "go"
    step = "touch %s; while [ ! -e %s ]; do sleep 0.05; done" % (tmp_path / "snap", go)
    proc = start_run(tmp_path, cfg, [m], snapshot=["timeout", "30", "sh", "-c", step])
    env = {"VMSNAP_RUNTIME_DIR": str(tmp_path / "run")}
    force = ["--force"] if "--force" in vmsnap("thaw", "--help").stdout else []
    try:
        wait_for(tmp_path / "snap")
        p = vmsnap("thaw", *force, env=env, timeout=30)
        assert p.returncode == 0, p.stderr
        assert thawed_soon([m], timeout=10)
    finally:
        go.touch()
    rc, res, err = finish(proc)
    assert rc == 1 and res["status"] == "failed" and codes(res) == ["FsThawedEarly"], err
    assert (tmp_path / "post-ran").exists()


# -- a SIGKILL: the reaper resumes the application -----------------------------------

def test_resume_command_runs_thaw_hooks_and_the_post_script(tmp_path):
    calls = tmp_path / "hook-calls"
    hooks_dir = hook(tmp_path, calls)
    cfg = setup_scripts(tmp_path, post='echo "post $*" > %s' % (tmp_path / "post-ran"),
                        postScriptParams=["a b"], hooksDirectory=hooks_dir)
    log = tmp_path / "log"
    p = subprocess.run([sys.executable, "-m", "vmsnap_native._resume", "--config", cfg,
                        "--log-file", str(log), "--post", "--hook",
                        os.path.join(hooks_dir, "10-app")], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "post-ran").read_text() == "post a b\n"
    assert calls.read_text().split() == ["thaw"]
    assert "resume: post-script done" in log.read_text()
    # a post-script that fails the policy now is not run, and the log says why
    os.chmod(tmp_path / "etc" / "post.sh", 0o777)
    os.unlink(tmp_path / "post-ran")
    p = subprocess.run([sys.executable, "-m", "vmsnap_native._resume", "--config", cfg,
                        "--log-file", str(log), "--post"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 1 and not (tmp_path / "post-ran").exists()
    assert "InsufficientPermissionforPost-Script" in log.read_text()


@pytest.mark.timing
def test_sigkill_during_the_snapshot_the_reaper_runs_the_post_script(tmp_path, loopfs):
    """After a SIGKILL the reaper runs the thaw hooks and the post-script once the
    guardian has thawed and exited, never before: the guardian is held stopped
    (SIGSTOP) past the SIGKILL, so nothing has thawed; the hook and the
    post-script may run only after its SIGCONT, and each notes what the kernel
    says of the filesystem when it runs."""
    (m,) = loopfs.make(1)
    calls, post_ran = tmp_path / "hook-calls", tmp_path / "post-ran"
    d = tmp_path / "hooks"
    d.mkdir(mode=0o755)
    write_script(d / "10-app", 'if [ "$1" = thaw ]; then echo "thaw %s" >> %s; '
                 'else echo "$1" >> %s; fi' % (frozen_or_thawed(m), calls, calls))
    cfg = setup_scripts(tmp_path, post="echo %s > %s" % (frozen_or_thawed(m), post_ran),
                        timeoutInSeconds=10, hooksDirectory=str(d))
    proc = start_run(tmp_path, cfg, [m], snapshot=["sh", "-c", wait_in_step(tmp_path, "snap")],
                     extra=["--freeze-timeout", "30"])
    wait_for(tmp_path / "snap")
    guardian = guardian_of(proc.pid)
    os.kill(guardian, signal.SIGSTOP)
    try:
        proc.kill()
        proc.communicate(timeout=30)
        time.sleep(2.0)   # time enough for a reaper that does not wait to run the resume
        assert frozen_state(m), "thawed with the guardian stopped"
        assert not post_ran.exists(), "the post-script ran before the guardian had thawed"
        assert calls.read_text().split() == ["freeze"], "a thaw hook ran before the thaw"
    finally:
        os.kill(guardian, signal.SIGCONT)
    assert thawed_soon([m], timeout=10)
    wait_for(post_ran, timeout=30)
    end = time.monotonic() + 30   # the line comes once the post-script has returned
    while "resume: post-script done" not in (tmp_path / "vmsnap.log").read_text():
        assert time.monotonic() < end, (tmp_path / "vmsnap.log").read_text()
        time.sleep(0.05)
    assert post_ran.read_text().split() == ["thawed"]
    assert calls.read_text().split() == ["freeze", "thaw", "thawed"], \
        "the resume must run the thaw hook, after the thaw"
    assert "resume: hook 10-app thaw done" in (tmp_path / "vmsnap.log").read_text()


def test_sigkill_of_run_and_its_guardian_mid_wave_the_resume_thaws_first(tmp_path, loopfs):
    """`vmsnap run` and its guardian both SIGKILLed while the guardian's
    freeze wave runs (a writer holds the first filesystem's FIFREEZE in the
    kernel, helpers.pin_freeze; it lands once both are dead): the guardian
    recorded the wave as "may be ours" before its first FIFREEZE, and the
    reaper's resume thaws from that record before it runs the post-script,
    which finds both filesystems thawed."""
    ms = loopfs.make(2)
    post_ran = tmp_path / "post-ran"
    cfg = setup_scripts(tmp_path, post="echo %s %s > %s" % (
        frozen_or_thawed(ms[0]), frozen_or_thawed(ms[1]), post_ran), timeoutInSeconds=10)
    pin = pin_freeze(ms[0])
    try:
        time.sleep(0.1)
        proc = start_run(tmp_path, cfg, ms, snapshot=["true"], extra=["--freeze-timeout", "120"])
        end = time.monotonic() + 30
        guardian = None
        while guardian is None or not in_fifreeze(guardian):
            assert time.monotonic() < end and proc.poll() is None, "no guardian in FIFREEZE"
            try:
                guardian = guardian_of(proc.pid)
            except AssertionError:
                pass
            time.sleep(0.005)
        start = process.starttime(guardian)
        assert start is not None
        os.kill(guardian, signal.SIGKILL)
        proc.kill()
        proc.communicate(timeout=30)
        unpin_freeze(pin)   # the guardian's FIFREEZE lands, both dead
        assert pin.returncode == 0
        assert process.wait_gone(guardian, start, 30), "the guardian is still there"
        # the post-script's look first: the test's own probe (a FIFREEZE +
        # FITHAW) must not meet the post-script's
        end = time.monotonic() + 30
        while not (post_ran.exists() and post_ran.read_text().endswith("\n")):
            assert time.monotonic() < end, "no post-script after run and its guardian were " \
                "SIGKILLed; frozen: %s" % [frozen_state(m) for m in ms]
            time.sleep(0.05)
        assert post_ran.read_text().split() == ["thawed", "thawed"]
        assert thawed_soon(ms, timeout=15), "frozen after run and its guardian were SIGKILLed"
    finally:
        unpin_freeze(pin)
        env = dict(os.environ, VMSNAP_RUNTIME_DIR=str(tmp_path / "run"))
        subprocess.run([sys.executable, "-m", "vmsnap_native", "thaw"], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# The tracer of the next test: runs ARGV (a `vmsnap run`) under ptrace,
# catches the first script spawn after EVENTS has a "pre" line (a retry of
# the pre-script) at the child's first instruction, before it has done
# anything (the auto-attached child of PTRACE_O_TRACEVFORK starts stopped),
# SIGKILLs the run there, waits for the reaper's resume to run the
# post-script, then lets the caught child go and waits until it is gone.
# Prints the caught child's pid.
KILL_AT_SPAWN_TRACER = r"""
import ctypes, os, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
SEIZE, CONT, DETACH, GETEVENTMSG = 0x4206, 7, 17, 0x4201
O_TRACEVFORK, EVENT_VFORK, WALL = 0x4, 2, 0x40000000

def ptrace(req, pid, addr=None, data=None):
    if libc.ptrace(req, pid, addr, data) < 0:
        e = ctypes.get_errno()
        raise OSError(e, "ptrace(%d, %d): %s" % (req, pid, os.strerror(e)))

def lines(path):
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []

def wait_until(cond, what, timeout=60):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            sys.exit("never: " + what)
        time.sleep(0.02)

def running(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False

events, dead, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
controller = os.fork()
if controller == 0:
    os.execv(argv[0], argv)
ptrace(SEIZE, controller, None, O_TRACEVFORK)   # long before its first script
stopped, children, caught = set(), {}, None
while caught is None:
    pid, status = os.waitpid(-1, WALL)
    if not os.WIFSTOPPED(status):
        if pid == controller:
            sys.exit("the run ended before a retry was spawned")
        continue
    if pid != controller:              # a spawned child, at its first stop
        stopped.add(pid)
    elif status >> 16 == EVENT_VFORK:
        msg = ctypes.c_ulong()
        ptrace(GETEVENTMSG, controller, None, ctypes.byref(msg))
        children[msg.value] = "pre" in lines(events)
        if children[msg.value]:
            caught = msg.value         # the controller stays in its event stop
            break
        ptrace(CONT, controller, None, 0)
    else:                              # a signal for the controller: delivered
        sig = os.WSTOPSIG(status)
        ptrace(CONT, controller, None, 0 if status >> 16 else sig)
    for c in [c for c in stopped if c in children and not children[c]]:
        ptrace(DETACH, c, None, 0)     # not the one: it runs on
        stopped.discard(c)
while caught not in stopped:           # its first stop: it has run nothing yet
    pid, status = os.waitpid(caught, WALL)
    stopped.add(pid)
open(dead, "w").close()               # from now on a pre-script stays
os.kill(controller, signal.SIGKILL)    # the run dies with its retry cloned, not exec'd
while True:
    pid, status = os.waitpid(controller, WALL)
    if os.WIFEXITED(status) or os.WIFSIGNALED(status):
        break
# the reaper starts its resume once it has killed what it knew of: then
# the child goes on (the resume waits for the run lock, which the child's
# copy of the lock's fd holds until its exec or exit)
def resume_started():
    for d in os.listdir("/proc"):
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                if b"from vmsnap_native._resume import run; run()" in f.read().split(b"\0"):   # python -c CODE
                    return True
        except (OSError, ValueError):
            pass
    return False
wait_until(resume_started, "the reaper started no resume")
ptrace(DETACH, caught, None, 0)
wait_until(lambda: not running(caught), "the caught child (pid %d) is still running" % caught, 10)
print(caught)
"""


@pytest.mark.parametrize("containment", ["cgroup", "subreaper"])
def test_sigkill_at_the_spawn_of_a_retry_leaves_no_script_running(tmp_path, loopfs,
                                                                  containment):
    """`vmsnap run` SIGKILLed at the instant a pre-script retry is cloned (the
    child exists, has run nothing and is not yet known by pid: the worst
    instant, held exactly with ptrace).  The reaper's resume runs the
    post-script; the cloned child, let go only after that, must not run the
    pre-script again: a pre-script after the post-script would leave the
    application paused for good."""
    (m,) = loopfs.make(1)
    events = tmp_path / "events"
    # a pre-script that runs after the run's death stays (as a lock session would)
    cfg = setup_scripts(tmp_path, pre='echo "pre $$" >> %s; [ -e %s ] && exec sleep 30; exit 1'
                        % (events, tmp_path / "dead"),
                        post="echo post >> %s" % events, preScriptNoOfRetries=3)
    env = dict(os.environ, VMSNAP_RUNTIME_DIR=str(tmp_path / "run"))
    if containment == "subreaper":
        env["VMSNAP_COMPAT_DISABLE"] = "cgroup"
    run = [sys.executable, "-m", "vmsnap_native", "run", "--json", "--config", str(cfg),
           "--log-file", str(tmp_path / "vmsnap.log"), "--mount", m]
    p = subprocess.Popen([sys.executable, "-c", KILL_AT_SPAWN_TRACER, str(events),
                          str(tmp_path / "dead"), *run],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL)
    try:
        out, err = p.communicate(timeout=180)
        wait_for_line = time.monotonic() + 60
        while "post" not in events.read_text().split():
            assert time.monotonic() < wait_for_line, "the resume ran no post-script"
            time.sleep(0.05)
        lines = [ln.split()[0] for ln in events.read_text().splitlines()]
        assert p.returncode == 0, err
        assert lines == ["pre", "post"], "a pre-script ran after vmsnap was killed"
    finally:
        if p.poll() is None:
            p.kill()
        for ln in events.read_text().splitlines():   # whatever escaped
            if ln.startswith("pre ") and alive(int(ln.split()[1])):
                os.kill(int(ln.split()[1]), signal.SIGKILL)


def _resume_finished(log, timeout=60):
    """Waits until the reaper's resume has logged and exited."""
    end = time.monotonic() + timeout
    while True:
        text = log.read_text() if log.exists() else ""
        running = False
        for d in os.listdir("/proc"):
            try:
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    running = running or b"from vmsnap_native._resume import run; run()" in f.read().split(b"\0")
            except (OSError, ValueError):
                pass
        if "resume: " in text and not running:
            return text
        assert time.monotonic() < end, "the resume did not finish:\n" + text
        time.sleep(0.05)


def _runs(events):
    """(starts, ends) of the post-script, from its marker lines."""
    words = [ln.split()[0] for ln in events.read_text().splitlines()]
    return words.count("start"), words.count("end")


def test_sigkill_during_the_post_script_the_resume_runs_it_again_once(tmp_path, loopfs):
    """vmsnap SIGKILLed while its post-script runs: the reaper kills the
    post-script (its whole tree) and the resume runs it again from the start,
    so that it runs to its end once."""
    (m,) = loopfs.make(1)
    events, hold = tmp_path / "events", tmp_path / "hold"
    hold.touch()
    cfg = setup_scripts(tmp_path, post='echo "start $$" >> %s; while [ -e %s ]; do sleep 0.05; '
                        'done; echo "end $$" >> %s' % (events, hold, events))
    proc = start_run(tmp_path, cfg, [m])
    wait_for(events)
    first = int(events.read_text().split()[1])
    proc.kill()
    proc.communicate(timeout=30)
    assert gone_soon(first, timeout=10), "the reaper did not kill the post-script"
    hold.unlink()   # the resume's post-script runs through
    log = _resume_finished(tmp_path / "vmsnap.log")
    assert _runs(events) == (2, 1), events.read_text()
    assert "resume: post-script done" in log


KILL_AFTER_THE_POST_SCRIPT_TRACER = r"""
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
SEIZE, CONT, WALL = 0x4206, 7, 0x40000000

def ptrace(req, pid, addr=None, data=None):
    if libc.ptrace(req, pid, addr, data) < 0:
        e = ctypes.get_errno()
        raise OSError(e, "ptrace(%d, %d): %s" % (req, pid, os.strerror(e)))

events, argv = sys.argv[1], sys.argv[2:]
controller = os.fork()
if controller == 0:
    os.execv(argv[0], argv)
ptrace(SEIZE, controller)
while True:
    pid, status = os.waitpid(controller, WALL)
    if not os.WIFSTOPPED(status):
        sys.exit("the run ended before its post-script did")
    sig = os.WSTOPSIG(status)
    # SIGCHLD (seen, ignored or not, by a tracer) once the post-script has
    # ended: the run is held before it has run a single instruction since
    if sig == signal.SIGCHLD and status >> 16 == 0 and os.path.exists(events) and \
            "end" in open(events).read().split():
        break
    ptrace(CONT, controller, None, 0 if status >> 16 else sig)
os.kill(controller, signal.SIGKILL)
os.waitpid(controller, WALL)
"""


def test_sigkill_right_after_the_post_script_ended_does_not_run_it_again(tmp_path, loopfs):
    """vmsnap SIGKILLed after its post-script ended but before it could note
    it (held there exactly: under ptrace, at the SIGCHLD of the post-script's
    exit): the post-script has run, and the resume must not run it a second
    time."""
    (m,) = loopfs.make(1)
    events = tmp_path / "events"
    cfg = setup_scripts(tmp_path, post='echo "start $$" >> %s; echo "end $$" >> %s'
                        % (events, events))
    env = dict(os.environ, VMSNAP_RUNTIME_DIR=str(tmp_path / "run"))
    run = [sys.executable, "-m", "vmsnap_native", "run", "--json", "--config", str(cfg),
           "--log-file", str(tmp_path / "vmsnap.log"), "--mount", m]
    p = subprocess.run([sys.executable, "-c", KILL_AFTER_THE_POST_SCRIPT_TRACER, str(events),
                        *run], env=env, capture_output=True, text=True, timeout=180,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    log = _resume_finished(tmp_path / "vmsnap.log")
    assert _runs(events) == (1, 1), "the post-script ran twice:\n" + events.read_text()
    assert "nothing left to run" in log
    assert not frozen_state(m)


def test_the_run_registers_its_resume_command_and_clears_it(tmp_path, loopfs, monkeypatch):
    """What the run hands the reaper (the containment branch's
    process.set_resume_command), seen from inside; the command it registers
    resumes the application when run as the reaper would run it."""
    (m,) = loopfs.make(1)
    calls = []
    pre_ran = tmp_path / "pre-ran"

    def set_resume_command(argv, env=None, wait_for=(), log_file=None):
        calls.append("cleared" if argv is None else
                     (list(argv), dict(env), list(wait_for), pre_ran.exists()))

    monkeypatch.setattr(process, "set_resume_command", set_resume_command, raising=False)
    cfg = setup_scripts(tmp_path, pre="touch %s" % pre_ran,
                        post="touch %s" % (tmp_path / "post-ran"))
    res = vmsnap_native.run(config=cfg, mounts=[m], log_file=str(tmp_path / "log"))
    assert res.status == "success"
    (argv, env, wait_for, pre_had_run), (argv2, _, wait_for2, _), last = calls
    assert not pre_had_run, "registered only after the pre-script ran"
    assert argv[:3] == [sys.executable, "-c", "from vmsnap_native._resume import run; run()"] \
        and "--post" in argv
    assert wait_for == [] and len(wait_for2) == 1 and wait_for2[0][0] > 0   # the guardian
    # during the pre-script the resume undoes the gentle presync's caps (its record);
    # once the guardian is gone, it also undoes what the session's record says
    records = [a for i, a in enumerate(argv) if i and argv[i - 1] == "--thaw-record"]
    records2 = [a for i, a in enumerate(argv2) if i and argv2[i - 1] == "--thaw-record"]
    assert ["-gentle-" in os.path.basename(r) for r in records] == [True], argv
    assert len(records2) == 2 and records[0] in records2, argv2
    assert last == "cleared"
    os.unlink(tmp_path / "post-ran")
    p = subprocess.run(argv2, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "post-ran").exists()
