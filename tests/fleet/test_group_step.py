"""The group's snapshot step as the role runs it (the action plugin's
group_step, one call per host's worker): pure Python, no playbook, no host."""

import json
import multiprocessing
import os
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
        json.dump({"rc": 0, "end_epoch": earlier, "stdout": "", "stderr": ""}, f)
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
