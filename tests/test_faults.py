"""Faults, tried one by one: after each (an autouse fixture checks it), no
filesystem is frozen, no process of the test is left running, and the next
run works.  Each kill lands in the phase it names: the test waits on a
barrier (a marker the script writes, or a freeze held up on purpose) and
asserts where the run was when it died."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from vmsnap_native import cycle
from vmsnap_native.logbook import Logbook

from .conftest import (
    descendants,
    frozen_state,
    reap_zombie_children,
    root_only,
    set_child_subreaper,
    thawed_soon,
)
from .helpers import (
    codes,
    outliving_step,
    run_json,
    setup_scripts,
    thawed_while_the_step_ran,
    vmsnap,
)

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


def gone_soon(pids, timeout=5.0):
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


def _cmdline(pid: int) -> str:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


@pytest.fixture(autouse=True)
def nothing_left_behind(loopfs, tmp_path):
    """After every fault: the kernel says none of the test's filesystems is
    frozen, no process the test started (or one of those started, even
    orphaned) is alive, and a plain run on the same filesystems succeeds."""
    before = set(descendants())   # this process's own helpers, from earlier tests
    set_child_subreaper(True)
    try:
        yield
    finally:
        set_child_subreaper(False)
    mounted = [m for m, _ in loopfs.mounts if os.path.ismount(m)]
    problems = []
    if not thawed_soon(mounted, timeout=5):
        problems.append("left frozen: %s" % [m for m in mounted if frozen_state(m)])
    end = time.monotonic() + 5
    while True:
        reap_zombie_children()
        left = {pid: state for pid, state in descendants().items()
                if state not in "ZX" and pid not in before}
        if not left or time.monotonic() > end:
            break
        time.sleep(0.05)
    for pid in left:
        problems.append("left running: pid %d %s" % (pid, _cmdline(pid)))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    gone_soon(list(left))
    reap_zombie_children()
    assert not problems, problems
    writable = [m for m in mounted if os.statvfs(m).f_flag & os.ST_RDONLY == 0]
    if writable:
        next_run_works(tmp_path, writable)


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
    assert not frozen_state(m), "killed in the pre-script, but the freeze had begun"
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert gone_soon(script_pids), "the pre-script outlived vmsnap"
    assert not frozen_state(m)


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


def test_killed_during_post_script(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    pids = tmp_path / "pids"
    snap = tmp_path / "snapshot-ran"
    # sleeps on its first call only: the resume command's call ends at once
    cfg = setup_scripts(tmp_path, post="[ -e %s ] && exit 0; echo $$ > %s; sleep 60" % (pids, pids),
                        timeoutInSeconds=120)
    run = start_run(tmp_path, cfg, [m], snapshot=["touch", str(snap)])
    assert wait_for(pids)
    post_pid = int(pids.read_text())
    # the phase: the snapshot was taken and the filesystem thawed before the post-script
    assert snap.exists() and not frozen_state(m) and alive(post_pid)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert gone_soon([post_pid]), "the post-script outlived vmsnap"


# The controller: a freeze session over the parent (first argument) and the
# filesystems mounted inside it.  A thread watches the session's shared
# states and prints them once the parent reaches the state WANT: where the
# kill will land.  "thaw" first freezes, says so, and waits for a line.
CONTROLLER = textwrap.dedent("""
    import json, sys, threading, time, vmsnap_native as v
    from vmsnap_native.freeze import state_name
    phase, want, mounts = sys.argv[1], sys.argv[2], sys.argv[3:]
    s = v.freeze_filesystems(mounts, timeout=120, presync=(phase == "presync"))
    s.start()

    def states():
        return {m.mountpoint: state_name(s._shared.fs[i].state) for i, m in enumerate(s.mounts)}

    def report():   # prints what it sees after 30 s at most: the test fails, not hangs
        end = time.monotonic() + 30
        while states()[mounts[0]] != want and time.monotonic() < end:
            time.sleep(0.002)
        time.sleep(0.3)   # the others settle; the parent stays held up
        print(json.dumps(states()), flush=True)

    if phase == "thaw":
        s.freeze()
        print(json.dumps(states()), flush=True)
        sys.stdin.readline()
    threading.Thread(target=report, daemon=True).start()
    s.thaw() if phase == "thaw" else s.freeze()
    time.sleep(120)
""")

# phase: (the parent's state when killed, the children's)
PHASES = {
    "presync": ("syncing", "synced"),     # the parent's syncfs held up, nothing frozen
    "freeze": ("freezing", "frozen"),     # between the waves: children frozen, parent not yet
    "thaw": ("thawing", "frozen"),        # parent thawing first, children still frozen
}


NO_SYNCFS = any(x in os.environ.get("VMSNAP_COMPAT_DISABLE", "") for x in ("syncfs", "all"))


@pytest.mark.parametrize("phase", [
    "freeze",
    pytest.param("presync", marks=[
        pytest.mark.ci_optional,   # skipped only where the fallback run switches syncfs off
        pytest.mark.skipif(NO_SYNCFS, reason="syncfs switched off: there is no presync phase")]),
    "thaw",
])
def test_controller_killed_in_a_pinned_freeze_phase(tmp_path, loopfs, phase):
    # The parent's image lives on a holder filesystem that is not in the
    # session; freezing the holder holds up every write of the parent's, so
    # its syncfs, FIFREEZE or FITHAW cannot return: the kill lands in that phase.
    (holder,) = loopfs.make(1, size_mb=64)
    (parent,) = loopfs.make(1, parent=holder)
    children = [loopfs.make_at(os.path.join(parent, "child%d" % i)) for i in range(2)]
    mounts = [parent, *children]
    want_parent, want_children = PHASES[phase]
    with open(os.path.join(parent, "dirt"), "wb") as f:   # something for the presync to write
        f.write(os.urandom(1 << 20))
    if phase != "presync":
        # written out now (syncfs of ours only: a global sync would wait on
        # any frozen filesystem of the machine)
        subprocess.run(["sync", "-f", *mounts, holder], check=True, timeout=60)
    ctl = None
    try:
        ctl = subprocess.Popen([sys.executable, "-c", CONTROLLER, phase, want_parent, *mounts],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if phase == "thaw":
            assert all(st == "frozen" for st in json.loads(ctl.stdout.readline()).values())
            subprocess.run(["fsfreeze", "-f", holder], check=True)
            ctl.stdin.write("go\n")
            ctl.stdin.flush()
        else:
            subprocess.run(["fsfreeze", "-f", holder], check=True)
        landed = json.loads(ctl.stdout.readline())
        assert landed == {parent: want_parent, **{c: want_children for c in children}}, landed
        ctl.send_signal(signal.SIGKILL)
        ctl.wait()
        time.sleep(0.5)
        if phase == "thaw":
            # parents first: the children stay frozen while the parent's thaw is held up
            assert all(frozen_state(c) for c in children), "a child thawed before its parent"
        elif phase == "presync":
            assert not any(frozen_state(c) for c in children), "frozen after the controller died"
    finally:
        subprocess.run(["fsfreeze", "-u", holder], stderr=subprocess.DEVNULL)
        if ctl is not None:
            ctl.kill()
            ctl.wait()
    # the held-up call returns; the guardian finishes the job
    assert thawed_soon(mounts), "left frozen after a kill in phase %s" % phase
    time.sleep(0.3)
    assert not any(frozen_state(m) for m in mounts), "frozen again after the thaw"


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


# -- snapshot steps that misbehave -------------------------------------------------------

@pytest.mark.timing
def test_snapshot_ignoring_sigterm_is_killed_at_the_deadline(tmp_path, loopfs):
    # TERM at the freeze deadline, KILL 1 s later (SNAPSHOT_GRACE): the step
    # records when TERM came and beats until it dies
    # records when TERM came, beats until it dies, and has a writer blocked on the frozen
    # filesystem: the guardian thaws at the deadline while the step still runs
    (m,) = loopfs.make(1)
    pidf, term, beats = tmp_path / "pid", tmp_path / "term", tmp_path / "beats"
    t0 = time.monotonic()
    rc, res, _ = run_json(tmp_path, tmp_path / "none", [m], extra=["--freeze-timeout", "1"],
                          snapshot=["sh", "-c", outliving_step(tmp_path, m)])
    assert time.monotonic() - t0 < 10
    assert rc == 1 and "FsFreezeTimeout" in codes(res)
    assert res["snapshot"]["timed_out"] is True and res["snapshot"]["signal"] == 9, res["snapshot"]
    term_at = float(term.read_text().split()[0])
    last_beat = float(beats.read_text().split()[-1])
    assert 0.7 < last_beat - term_at < 3.0, "KILL %.2f s after TERM" % (last_beat - term_at)
    assert thawed_while_the_step_ran(tmp_path) > 0.5
    assert not alive(int(pidf.read_text())) and not frozen_state(m)


@pytest.mark.timing
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
@pytest.mark.timing
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
    # drained as it comes; the first and the last 128 KiB kept (256 KiB in all)
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, pre="echo HEAD; head -c 100000000 /dev/zero | tr '\\0' x; "
                                      "echo; echo END")
    rc, res, p = run_json(tmp_path, cfg, [m])
    assert rc == 0
    out = res["pre_script"]["output"]
    head, gap, tail = re.split(r"\n\[\.\.\. (\d+) bytes not kept \.\.\.\]\n", out)
    total = len("HEAD\n") + 100_000_000 + len("\nEND\n")
    assert head.startswith("HEAD\nxxx") and tail.endswith("xxx\nEND\n")
    assert len(head) == len(tail) == 128 * 1024
    assert int(gap) == total - 256 * 1024
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
    # README: "frozen and thawed without error"
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, pre="mount -o remount,ro %s" % m)
    try:
        rc, res, _ = run_json(tmp_path, cfg, [m])
        assert rc == 0 and res["status"] == "success" and res["errors"] == [], res
        assert res["consistency"] == "application"
        (fs,) = res["freeze"]["mounts"]
        assert fs["mountpoint"] == m and fs["frozen"] and fs["state"] == "thawed", fs
        assert not frozen_state(m)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", m], check=True)


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


# -- the presync's /sys changes, when the run and its guardian both die ------------

def _sys_values(mountpoint) -> dict:
    """Every value the presync may change for MOUNTPOINT's device: its strict
    limit and ratio (max_bytes is the ratio in bytes, and drifts with free
    memory), and rcu_expedited.  Other devices are left out: other work on
    this machine may cap its own meanwhile."""
    dev = os.stat(mountpoint).st_dev
    bdi = "/sys/class/bdi/%d:%d/" % (os.major(dev), os.minor(dev))
    out = {}
    for p in [bdi + "strict_limit", bdi + "max_ratio_fine", bdi + "max_ratio",
              "/sys/kernel/rcu_expedited"]:
        try:
            with open(p) as f:
                out[p] = f.read().strip()
        except OSError:
            pass
    return out


def test_run_and_guardian_sigkilled_in_the_presync_the_reaper_restores_sys(tmp_path, loopfs):
    """`vmsnap run` (no scripts) and its guardian are SIGKILLed while the
    presync caps the device's dirty data (strict_limit on): neither can put
    the values back, and the reaper's resume does, from the session's record,
    within a few seconds -- not the next run."""
    from vmsnap_native.freeze import _read_record, runtime_dir

    from .test_jit_freeze import CapWatch, Streaming, bdi_values
    busy, = loopfs.make(1, size_mb=256)
    before = _sys_values(busy)
    assert bdi_values(busy)[0] == 0, "the loop device already has strict_limit on"
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"fsFreezeEnabled": True, "presyncDirtyCapMiB": 64,
                               "expediteRcu": True}))
    os.chmod(cfg, 0o600)
    w = Streaming(busy)
    watch = CapWatch(busy)
    guardian = None
    try:
        p = start_run(tmp_path, cfg, [busy], snapshot=["true"])
        assert watch.seen.wait(30), "the cap never came on"
        import glob
        for rec in glob.glob(os.path.join(runtime_dir(), "freeze-*.rec")):
            _, sh = _read_record(rec)
            if sh.controller_pid == p.pid and sh.guardian_pid > 0:   # not the gentle record
                guardian = sh.guardian_pid
        assert guardian, "no record of the run's session"
        os.kill(guardian, signal.SIGSTOP)   # it must not see the controller die
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        os.kill(guardian, signal.SIGKILL)
        end = time.monotonic() + 5.0
        while _sys_values(busy) != before and time.monotonic() < end:
            time.sleep(0.05)
        after = _sys_values(busy)
        assert after == before, {k: (before.get(k), v) for k, v in after.items()
                                 if before.get(k) != v}
    finally:
        watch.stop()
        w.stop()
    assert not frozen_state(busy)
