"""The causal proof of a host's window end rests on the
module's WAITER (vmsnap's snapshot step on the host) and the action plugin's
RELEASE (one shell command).  Their contract, with the real shell text and
no ansible: the waiter ends only once a release file exists, RELEASE says
"released" only when it made that file, so a waiter that ends after a
"released" ended after the controller's sent_at; a second RELEASE (the end
task's, someone else's) says "already"."""

import ast
import os
import shlex
import subprocess
import time

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                    "contrib", "ansible", "plugins")


def constant(path, name):
    """A module-level string constant of a plugin file, without importing it."""
    with open(os.path.join(ROOT, path)) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name
                                                for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError(name)


WAITER = constant("modules/vmsnap.py", "WAITER")
RELEASE = constant("action/vmsnap.py", "RELEASE")


def release(d, verdict="ok"):
    sent_at = time.time()
    out = subprocess.run(["/bin/sh", "-c", RELEASE % (shlex.quote(d), verdict)],
                         capture_output=True, text=True, timeout=10)
    return sent_at, out.stdout.split()[0] if out.stdout.split() else None, out


@pytest.fixture
def session(tmp_path, request):
    d = str(tmp_path / "group")
    os.mkdir(d, 0o700)
    os.mkfifo(os.path.join(d, "release.fifo"), 0o600)
    env = dict(os.environ, VMSNAP_FROZEN_MOUNTS="/data", **getattr(request, "param", {}))
    p = subprocess.Popen(["/bin/sh", "-c", WAITER, "vmsnap-group-step", d], env=env)
    end = time.monotonic() + 10
    while not os.path.exists(os.path.join(d, "frozen_at")) and time.monotonic() < end:
        time.sleep(0.01)
    try:
        yield d, p
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def read_float(d, name):
    with open(os.path.join(d, name)) as f:
        return float(f.read())


def test_the_waiter_ends_only_after_the_release_that_says_released(session):
    d, p = session
    time.sleep(0.3)
    assert p.poll() is None, "the wait step ended with no release"
    # a line on the FIFO alone (a stray wake-up) does not end it
    fd = os.open(os.path.join(d, "release.fifo"), os.O_RDWR | os.O_NONBLOCK)
    os.write(fd, b"go\n")
    os.close(fd)
    time.sleep(0.3)
    assert p.poll() is None and not os.path.exists(os.path.join(d, "released_at"))
    sent_at, state, out = release(d)
    assert state == "released" and out.returncode == 0, out
    assert p.wait(5) == 0
    assert read_float(d, "released_at") >= sent_at
    assert read_float(d, "frozen_at") < sent_at
    # the end task's own release after it, or anyone's: "already", never "released"
    _, again, _ = release(d)
    assert again == "already"


def test_a_release_that_finds_the_run_ended_says_already(session):
    d, p = session
    with open(os.path.join(d, "result.json"), "w") as f:
        f.write("{}")
    _, state, _ = release(d)
    assert state == "already"
    time.sleep(0.2)
    assert p.poll() is None   # it made no release file: the step still waits


@pytest.mark.parametrize("session, stepped", [
    ({"VMSNAP_CLOCK_MOVED": "-1.000000 0.050200"}, True),
    ({"VMSNAP_CLOCK_MOVED": "+0.000400 0.050200"}, False),
    ({}, None),   # not armed (or an older vmsnap): unknown
], indirect=["session"])
def test_the_clock_moved_during_the_freeze_reaches_the_end_result(session, stepped):
    """vmsnap hands its snapshot step how far the wall clock moved from arming
    to the end of the freeze; the wait step keeps it beside frozen_at and the
    module's end reports it (the verdict refuses a host whose clock stepped)."""
    from .plugin_module import plugin_module
    d, p = session
    release(d)
    assert p.wait(5) == 0   # the wait step has written all it writes
    with plugin_module("vmsnap") as mod:
        got = mod.clock_moved(d)
    assert got["clock_stepped"] is stepped, got
    if stepped is not None:
        assert got["clock_moved"] == (-1.0 if stepped else 0.0004)
