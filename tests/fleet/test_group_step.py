"""The group's snapshot step as the role runs it (the action plugin's
group_step, one call per host's worker): pure Python, no playbook, no host."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from .plugin_module import action_plugin


@pytest.fixture(scope="module")
def plugin():
    with action_plugin("vmsnap") as mod:
        yield mod


def step(mod, d, argv, not_before=0.0, timeout=5):
    am = mod.ActionModule.__new__(mod.ActionModule)   # no task: group_step needs none
    return am.group_step({"argv": argv, "not_before": not_before, "dir": d, "timeout": timeout})


def test_the_step_runs_once_among_concurrent_workers(plugin, tmp_path):
    d = tempfile.mkdtemp(dir=tmp_path)
    counter = tmp_path / "ran"
    not_before = time.time() + 0.3

    def worker(i):
        res = step(plugin, d, ["/bin/sh", "-c", "echo x >> %s; sleep 0.3" % counter], not_before)
        with open(tmp_path / ("r%d" % i), "w") as f:
            json.dump(res, f)

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=worker, args=(i,)) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(20)
    assert counter.read_text().count("x") == 1
    res = [json.loads((tmp_path / ("r%d" % i)).read_text()) for i in range(8)]
    assert sum(r["ran_here"] for r in res) == 1 and len({r["end"] for r in res}) == 1
    assert all(r["rc"] == 0 and r["end_epoch"] >= not_before for r in res)


def test_a_directory_not_private_to_this_user_is_refused(plugin, tmp_path):
    d = tempfile.mkdtemp(dir=tmp_path)
    os.chmod(d, 0o755)
    with pytest.raises(Exception, match="must be a directory of this user's"):
        step(plugin, d, ["true"])
    os.chmod(d, 0o700)
    os.chown(d, 65534, 65534)   # another user's (play-level become without become: false)
    with pytest.raises(Exception, match="must be a directory of this user's"):
        step(plugin, d, ["true"])


def test_the_others_stop_waiting_when_the_worker_that_ran_it_is_gone(plugin, tmp_path):
    """The worker that took the step's lock died without a result: the hosts
    are released as failed at once, not held frozen for the whole timeout."""
    d = tempfile.mkdtemp(dir=tmp_path)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()   # a pid that is gone
    with open(os.path.join(d, "step.lock"), "w") as f:
        f.write("%d\n" % p.pid)
    t = time.monotonic()
    res = step(plugin, d, ["true"], timeout=30)
    assert time.monotonic() - t < 5
    assert res["failed"] and res["rc"] is None and "gone" in res["msg"], res


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_hung_step_is_stopped_at_its_timeout_with_its_children(plugin, tmp_path):
    """A snapshot command that never ends (and ignores SIGTERM, as does a child
    of its own) is stopped at the step's timeout: the play goes on, every host
    is released as failed, and nothing of the command is left running."""
    d = tempfile.mkdtemp(dir=tmp_path)
    child = tmp_path / "child"
    hung = ["/bin/sh", "-c", "trap '' TERM; (trap '' TERM; exec sleep 300) & echo $! > %s; "
            "sleep 300; sleep 300" % child]
    ctx = multiprocessing.get_context("fork")
    out = tmp_path / "waiter"

    def waiter():
        time.sleep(0.3)   # the runner has the lock by then
        with open(out, "w") as f:
            json.dump(step(plugin, d, ["true"], timeout=2), f)

    w = ctx.Process(target=waiter)
    w.start()
    t = time.monotonic()
    res = step(plugin, d, hung, timeout=2)
    took = time.monotonic() - t
    w.join(30)
    assert res["ran_here"] and res["failed"] and res.get("timed_out"), res
    assert "did not end within 2s" in res["msg"]
    assert 2 <= took < 2 + 5 + 5, took            # the timeout, then SIGTERM's grace
    assert not _alive(int(child.read_text())), "the step's child is still running"
    seen = json.loads(out.read_text())
    assert not seen["ran_here"] and seen["failed"] and seen.get("timed_out"), seen


def test_a_step_timeout_of_zero_is_refused(plugin, tmp_path):
    d = tempfile.mkdtemp(dir=tmp_path)
    with pytest.raises(Exception, match="timeout must be more than 0"):
        step(plugin, d, ["true"], timeout=-1)


def test_a_step_directory_used_before_is_not_taken_for_this_step(plugin, tmp_path):
    """A directory reused from an earlier group snapshot (its lock and result
    still there): no host is released as if this step had succeeded, and the
    snapshot command is not taken for run."""
    d = tempfile.mkdtemp(dir=tmp_path)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    earlier = time.time() - 60
    with open(os.path.join(d, "step.lock"), "w") as f:
        f.write("%d\n" % p.pid)
    with open(os.path.join(d, "step.json"), "w") as f:
        json.dump({"rc": 0, "end_epoch": earlier, "not_before": earlier - 2, "stdout": "",
                   "stderr": ""}, f)
    ran = tmp_path / "ran"
    res = step(plugin, d, ["/bin/sh", "-c", "touch %s" % ran], not_before=time.time() + 0.2)
    assert res["failed"] and res["rc"] is None and "earlier group snapshot" in res["msg"], res
    assert not ran.exists()


def test_the_step_is_stopped_when_the_worker_that_runs_it_dies(plugin, tmp_path):
    """Ctrl-C of ansible-playbook: each worker passes the signal to its own
    process group and exits; the snapshot command, in a session of its own
    (for its timeout), gets SIGTERM when its worker is gone."""
    d = tempfile.mkdtemp(dir=tmp_path)
    pidfile = tmp_path / "pid"
    argv = ["/bin/sh", "-c", "echo $$ > %s; exec sleep 300" % pidfile]
    w = multiprocessing.get_context("fork").Process(target=step, args=(plugin, d, argv),
                                                    kwargs={"timeout": 600})
    w.start()
    deadline = time.monotonic() + 10
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline, "the step did not start"
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    os.kill(w.pid, 9)
    w.join(10)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = _alive(pid)
    if alive:
        os.kill(pid, 9)
    assert not alive, "the snapshot command outlived the worker that ran it"


def _ansible_like_worker(plugin, d, argv, mode):
    """As ansible-core's WorkerProcess: a session of its own; on SIGINT or
    SIGTERM (the playbook's Ctrl-C) it signals its own process group and
    exits; a task timeout is an exception raised from a SIGALRM handler."""
    os.setsid()

    def term(signum, frame):
        signal.signal(signum, signal.SIG_DFL)
        try:
            os.killpg(os.getpid(), signum)
        except OSError:
            pass
        os._exit(1)

    signal.signal(signal.SIGINT, term)
    signal.signal(signal.SIGTERM, term)
    if mode == "alarm":
        def task_timeout(signum, frame):
            raise TimeoutError("The action did not complete within the task's timeout")
        signal.signal(signal.SIGALRM, task_timeout)
        signal.alarm(2)
    try:
        step(plugin, d, argv, timeout=60)
    finally:
        os._exit(3)


def _wait_for_text(path, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.05)
    raise TimeoutError(path)


@pytest.mark.parametrize("mode", ["SIGTERM", "SIGINT", "alarm"])
def test_stopping_the_worker_stops_the_snapshot_command(plugin, tmp_path, mode):
    """Ctrl-C of ansible-playbook, or a task timeout: the snapshot command
    (in a session of its own) is stopped with its worker, not left to take a
    snapshot that nothing records after the hosts have thawed."""
    d = tempfile.mkdtemp(dir=tmp_path)
    pidfile = tmp_path / "cmd.pid"
    argv = ["/bin/sh", "-c", "echo $$ > %s; exec sleep 120" % pidfile]
    w = multiprocessing.get_context("fork").Process(target=_ansible_like_worker,
                                                    args=(plugin, d, argv, mode))
    w.start()
    cmd = int(_wait_for_text(pidfile))
    try:
        if mode != "alarm":
            os.kill(w.pid, getattr(signal, mode))
        w.join(15)
        deadline = time.monotonic() + 5
        while _alive(cmd) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(cmd), "the snapshot command outlived its worker (%s)" % mode
    finally:
        try:
            os.kill(cmd, signal.SIGKILL)
        except OSError:
            pass


def test_the_step_ends_when_the_command_exits_whatever_it_left_running(plugin, tmp_path):
    """A command that took the snapshot and exited, leaving a helper that
    holds its output open: the step is over (the hosts thaw) at its exit."""
    d = tempfile.mkdtemp(dir=tmp_path)
    pidfile = tmp_path / "helper"
    t = time.monotonic()
    res = step(plugin, d, ["/bin/sh", "-c", "sleep 60 & echo $! > %s; echo snapshot-id-42"
                           % pidfile], timeout=5)
    took = time.monotonic() - t
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert not res.get("failed") and res["rc"] == 0, res
    assert took < 3, "held %.1fs after the command exited" % took
    assert "snapshot-id-42" in res["stdout"]


def test_a_timed_out_step_stops_its_whole_session_and_keeps_its_output(plugin, tmp_path):
    """coreutils timeout(1), common around a cloud CLI in a snapshot script,
    makes a process group of its own: it and its child are stopped with the
    step all the same, and what the command printed is kept."""
    d = tempfile.mkdtemp(dir=tmp_path)
    pidfile = tmp_path / "inner"
    argv = ["/bin/sh", "-c", "echo snapshot-id-7; timeout 120 /bin/sh -c 'echo $$ $PPID > %s; "
            "exec sleep 120'; echo after" % pidfile]
    res = step(plugin, d, argv, timeout=2)
    pids = [int(x) for x in _wait_for_text(pidfile, 1).split()]   # sleep, timeout(1)
    left = [p for p in pids if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert res["failed"] and res.get("timed_out"), res
    assert not left, "the timed-out command's children %s run on" % left
    assert "snapshot-id-7" in res["stdout"], res


def test_every_worker_takes_the_one_steps_result_across_a_clock_step(plugin, tmp_path):
    """The controller's clock steps back 3 s while the step runs: the other
    workers still take its result (a result is this step's by its not_before,
    not by the wall clock), so every host is told the same outcome."""
    d = tempfile.mkdtemp(dir=tmp_path)
    out = tmp_path / "waiter"
    not_before = time.time() + 0.5

    def waiter():
        time.sleep(0.2)
        with open(out, "w") as f:
            json.dump(step(plugin, d, ["true"], not_before=not_before), f)

    w = multiprocessing.get_context("fork").Process(target=waiter)
    w.start()
    real = plugin.time.time
    plugin.time.time = lambda: real() - 3   # the runner's wall clock, stepped back
    try:
        runner = step(plugin, d, ["/bin/sh", "-c", "sleep 0.3"], not_before=not_before)
    finally:
        plugin.time.time = real
    w.join(20)
    seen = json.loads(out.read_text())
    assert runner["ran_here"] and not seen["ran_here"]
    assert not runner.get("failed") and not seen.get("failed"), (runner, seen)


def test_a_step_timeout_of_integer_zero_is_refused(plugin, tmp_path):
    with pytest.raises(Exception, match="timeout must be more than 0"):
        step(plugin, tempfile.mkdtemp(dir=tmp_path), ["true"], timeout=0)
