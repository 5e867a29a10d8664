"""Faults, tried one by one: after each, no filesystem is frozen, no process
is left behind, and the next run works."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from vmsnap_native import cycle
from vmsnap_native.logbook import Logbook

from .conftest import frozen_state, root_only, thawed_soon
from .helpers import codes, run_json, setup_scripts, vmsnap

pytestmark = root_only


def alive(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def wait_for(path, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            return True
        time.sleep(0.02)
    return False


def gone_soon(pids, timeout=2.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.02)
    return False


def start_run(tmp_path, cfg, mounts, snapshot=()):
    argv = [sys.executable, "-m", "vmsnap_native", "run", "--config", str(cfg),
            "--log-file", str(tmp_path / "log")]
    for m in mounts:
        argv += ["--mount", m]
    if snapshot:
        argv += ["--", *snapshot]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def next_run_works(tmp_path, mounts):
    end = time.monotonic() + 60
    while True:
        rc, res, _ = run_json(tmp_path, tmp_path / "no-config", mounts)
        # a killed run's resume command holds the run lock while it runs the post-script
        if [e["code"] for e in res["errors"]] != ["AnotherRunInProgress"] or \
                time.monotonic() > end:
            break
        time.sleep(0.2)
    assert rc == 0 and res["status"] == "success", res


# -- vmsnap run killed with SIGKILL in each phase --------------------------------------

def test_killed_during_pre_script_leaves_no_script_running(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    pids = tmp_path / "pids"
    cfg = setup_scripts(tmp_path, pre="sleep 60 & echo $! >> %s; echo $$ >> %s; wait" % (pids, pids),
                        timeoutInSeconds=120)
    run = start_run(tmp_path, cfg, [m])
    assert wait_for(pids)
    time.sleep(0.1)
    script_pids = [int(x) for x in pids.read_text().split()]
    assert all(alive(p) for p in script_pids)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert gone_soon(script_pids), "the pre-script outlived vmsnap"
    assert not frozen_state(m)
    next_run_works(tmp_path, [m])


def test_killed_during_snapshot_kills_the_step_and_a_lock_holder(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    holder = tmp_path / "holder"
    step = tmp_path / "step"
    # the pre-script leaves a background "lock session", as the MariaDB script does
    cfg = setup_scripts(tmp_path, pre="sleep 300 >/dev/null 2>&1 & echo $! > %s" % holder)
    run = start_run(tmp_path, cfg, [m], snapshot=["sh", "-c", "echo $$ > %s; sleep 60" % step])
    assert wait_for(step) and wait_for(holder)
    time.sleep(0.1)
    assert frozen_state(m)
    pids = [int(step.read_text()), int(holder.read_text())]
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert gone_soon(pids), "the snapshot step or the lock holder outlived vmsnap"
    assert thawed_soon([m])
    next_run_works(tmp_path, [m])


def test_killed_during_post_script(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    pids = tmp_path / "pids"
    # sleeps on its first call only: the resume command's call ends at once
    cfg = setup_scripts(tmp_path, post="[ -e %s ] && exit 0; echo $$ > %s; sleep 60" % (pids, pids),
                        timeoutInSeconds=120)
    run = start_run(tmp_path, cfg, [m])
    assert wait_for(pids)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert gone_soon([int(pids.read_text())])
    assert not frozen_state(m)
    next_run_works(tmp_path, [m])


FREEZE_THEN = textwrap.dedent("""
    import sys, time, vmsnap_native as v
    s = v.freeze_filesystems(sys.argv[2:], timeout=60)
    s.start()
    if sys.argv[1] == "freeze":
        print("go", flush=True)
        s.freeze()
    else:
        s.freeze()
        print("go", flush=True)
        s.thaw()
    time.sleep(60)
""")


@pytest.mark.parametrize("phase", ["freeze", "thaw"])
def test_killed_between_freezes_or_during_thaw(tmp_path, loopfs, phase):
    # nested filesystems: two freeze waves; the controller dies at various
    # moments of the freeze (or of the thaw); the guardian finishes the job
    (outer,) = loopfs.make(1, size_mb=128)
    inner = loopfs.make(3, parent=outer)
    mounts = [outer, *inner]
    for delay in (0, 0.0005, 0.001, 0.002, 0.005, 0.02):
        for mnt in inner:   # dirty data, so the freeze takes a moment
            with open(os.path.join(mnt, "dirt"), "wb") as f:
                f.write(os.urandom(1 << 20))
        ctl = subprocess.Popen([sys.executable, "-c", FREEZE_THEN, phase, *mounts],
                               stdout=subprocess.PIPE, text=True)
        assert ctl.stdout.readline().strip() == "go"
        time.sleep(delay)
        ctl.send_signal(signal.SIGKILL)
        ctl.wait()
        assert thawed_soon(mounts), "left frozen (delay %s)" % delay
    next_run_works(tmp_path, mounts)


def test_guardian_and_controller_killed_vmsnap_thaw_recovers(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    code = ("import sys, os, signal, time, vmsnap_native as v\n"
            "s = v.freeze_filesystems([sys.argv[1]], timeout=60); s.freeze()\n"
            "os.kill(s.guardian_pid, signal.SIGKILL); os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", code, m])
    assert frozen_state(m)
    p = vmsnap("thaw", "--json")
    assert p.returncode == 0
    out = json.loads(p.stdout)
    assert out["status"] == "thawed" and out["filesystems"][0]["mountpoint"] == m
    assert not frozen_state(m)
    next_run_works(tmp_path, [m])


# -- snapshot steps that misbehave -------------------------------------------------------

def test_snapshot_ignoring_sigterm_is_killed_at_the_deadline(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    pidf = tmp_path / "pid"
    t0 = time.monotonic()
    rc, res, _ = run_json(tmp_path, tmp_path / "none", [m], extra=["--freeze-timeout", "1"],
                          snapshot=["sh", "-c", "trap '' TERM; echo $$ > %s; sleep 60; sleep 60"
                                    % pidf])
    assert time.monotonic() - t0 < 10
    assert rc == 1 and "FsFreezeTimeout" in codes(res)
    assert not alive(int(pidf.read_text())) and not frozen_state(m)


def test_snapshot_that_forks_and_exits_returns_at_once(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    pidf = tmp_path / "bg"
    t0 = time.monotonic()
    rc, res, _ = run_json(tmp_path, tmp_path / "none", [m],
                          snapshot=["sh", "-c", "sleep 30 & echo $! > %s; echo forked" % pidf])
    try:
        assert time.monotonic() - t0 < 10
        assert rc == 0 and "forked" in res["snapshot"]["output"] and not frozen_state(m)
    finally:
        os.kill(int(pidf.read_text()), signal.SIGKILL)


# -- scripts that misbehave ------------------------------------------------------------

@pytest.mark.parametrize("body,code", [
    ("kill -STOP $$", "Pre-ScriptTimeout"),                       # stops itself
    ("while :; do :; done", "Pre-ScriptTimeout"),                   # never exits
])
def test_script_that_never_finishes(tmp_path, loopfs, body, code):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, pre=body, timeoutInSeconds=0.5)
    t0 = time.monotonic()
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert time.monotonic() - t0 < 10 and codes(res) == [code]
    assert res["consistency"] == "filesystem"


def test_script_that_daemonizes_and_closes_its_output(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    pidf = tmp_path / "daemon"
    cfg = setup_scripts(tmp_path, pre="exec >/dev/null 2>&1 </dev/null; "
                        "(setsid sh -c 'echo $$ > %s; exec sleep 30' &); exit 0" % pidf)
    t0 = time.monotonic()
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert rc == 0 and time.monotonic() - t0 < 10
    assert wait_for(pidf)
    os.kill(int(pidf.read_text()), signal.SIGKILL)


def test_script_printing_100_mb(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, pre="head -c 100000000 /dev/zero | tr '\\0' x; echo; echo END")
    rc, res, p = run_json(tmp_path, cfg, [m])
    assert rc == 0 and res["pre_script"]["output"].rstrip().endswith("END")
    assert len(p.stdout) < 2_000_000, "the result carried the whole output"
    assert os.path.getsize(tmp_path / "vmsnap.log") < 2_000_000


def test_script_reading_stdin_gets_eof(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, pre="cat; read x || echo got-eof")
    t0 = time.monotonic()
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert rc == 0 and "got-eof" in res["pre_script"]["output"] and time.monotonic() - t0 < 10


# -- the filesystems change under us ---------------------------------------------------

def test_mount_disappearing_after_discovery_is_never_replaced_by_its_parent(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    plan = cycle.make_plan(str(tmp_path / "none"), mounts=[m])
    assert [c.mount.mountpoint for c in plan.selection.eligible] == [m]
    subprocess.run(["umount", m], check=True)
    try:
        res = cycle.Cycle(plan, None, Logbook(None)).run()
        # the directory now opens on the parent filesystem: refused, not frozen
        assert codes(res.to_dict()) == ["UnableToOpenMount"]
        assert "mount changed" in res.errors[0].message
        assert res.consistency == "crash"
    finally:
        subprocess.run(["mount", "-o", "loop", loopfs.image_of(m), m], check=True)


def test_filesystem_already_frozen_by_another_tool(tmp_path, loopfs):
    a, b = loopfs.make(2)
    subprocess.run(["fsfreeze", "-f", a], check=True)
    try:
        rc, res, _ = run_json(tmp_path, tmp_path / "none", [a, b])
        assert rc == 0 and any("already frozen" in w for w in res["warnings"])
        assert frozen_state(a), "vmsnap thawed someone else's freeze"
        assert not frozen_state(b)
    finally:
        subprocess.run(["fsfreeze", "-u", a])


def test_read_only_remount_during_the_run(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, pre="mount -o remount,ro %s" % m)
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert res["status"] in ("success", "degraded") and res["consistency"] is not None
    assert not frozen_state(m)
    subprocess.run(["mount", "-o", "remount,rw", m], check=True)
    next_run_works(tmp_path, [m])


# -- vmsnap's own files on the filesystem being frozen -----------------------------------

def test_json_output_and_working_directory_on_the_frozen_filesystem(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    out = os.path.join(m, "result.json")
    cmd = "%s -m vmsnap_native run --json --config %s --mount %s --log-file %s > %s" % (
        sys.executable, tmp_path / "none", m, os.path.join(m, "log"), out)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="")
    p = subprocess.run(["sh", "-c", cmd], cwd=m, timeout=60, env=env)
    assert p.returncode == 0
    with open(out) as f:
        assert json.load(f)["status"] == "success"
