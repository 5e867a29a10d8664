"""A consistency group across three hosts, driven by ansible-core, with the
faults a fleet has.  Each host is an sshd in its own mount namespace (see
harness.py); the snapshot step on the controller checks whether every host
really is frozen at its start and at its end, so the group's verdict is
compared with what was true.

Run with `make test-fleet` (it makes the ansible-core venv and sets
VMSNAP_FLEET_ANSIBLE); skipped otherwise."""

import json
import os
import subprocess
import sys
import time

import pytest

from .harness import Fleet

ANSIBLE = os.environ.get("VMSNAP_FLEET_ANSIBLE")
pytestmark = [
    pytest.mark.skipif(not ANSIBLE, reason="the fleet runs under `make test-fleet` "
                       "(VMSNAP_FLEET_ANSIBLE=path of ansible-playbook)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the fleet needs root (namespaces, loop devices)"),
]
STEP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "snapshot_step.py")


@pytest.fixture
def fleet():
    f = Fleet(3, ansible_bin=ANSIBLE)
    try:
        yield f.start()
    finally:
        f.stop()


def group(fleet, *, lease=30, sleep=0.5, exit=0, kill_sshd=(), continue_on_failure=True,
          check=False, background=False, playbook="group.yml"):
    """Runs the consistency_group role; returns (rc, output, report, step report)."""
    spec = {"hosts": {h.name: {"ns": h.ns_path, "mnts": h.mnts} for h in fleet.hosts},
            "started_file": os.path.join(fleet.base, "step-started"),
            "report": os.path.join(fleet.base, "step.json"),
            "sleep": sleep, "exit": exit, "kill_sshd": list(kill_sshd)}
    for p in (spec["started_file"], spec["report"], os.path.join(fleet.base, "report.json")):
        if os.path.exists(p):
            os.unlink(p)
    with open(os.path.join(fleet.base, "spec.json"), "w") as f:
        json.dump(spec, f)
    extra = {"consistency_group_lease": lease,
             "consistency_group_continue_on_failure": continue_on_failure,
             "consistency_group_report_file": os.path.join(fleet.base, "report.json"),
             "consistency_group_snapshot_command": [sys.executable, STEP,
                                                    os.path.join(fleet.base, "spec.json")]}
    if background:
        return fleet.start_playbook(playbook, extra)
    rc, out = fleet.playbook(playbook, extra, check=check)
    return rc, out, load(os.path.join(fleet.base, "report.json")), load(spec["report"])


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError("not within %gs: %s" % (timeout, what))


def events(host):
    return (host.read_run("fleet-app/events") or "").split()


def host_result(host):
    text = host.read_run("vmsnap-fleet/group/result.json")
    return json.loads(text) if text else None


def codes(res):
    return [e["code"] for e in res["errors"]]


def descendants(pid):
    """PID's processes, their children and so on (read from /proc)."""
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def assert_resumed(host):
    """Thawed, the application resumed by the post-script, vmsnap finished."""
    assert host.frozen() == "thawed", host.name
    assert events(host) == ["pre", "post"], host.name


# -- the group ------------------------------------------------------------------

def test_every_window_covers_the_step_application_consistent(fleet):
    rc, out, report, step = group(fleet)
    assert rc == 0, out
    verdict = report["verdict"]
    assert (verdict["status"], verdict["consistency"], verdict["broken_by"]) == \
        ("success", "application", []), verdict["msg"]
    # what the verdict claims was true: every host frozen across the step
    assert step["start"] == step["end"] == {h.name: "frozen" for h in fleet.hosts}
    snap = verdict["snapshot"]
    # one host's worker ran the step; each host was released by the same task,
    # the moment the step's result was there (no task fan-out after the step)
    ran = [h.name for h in fleet.hosts if report["released"][h.name]["snapshot"]["ran_here"]]
    assert len(ran) == 1, report["released"]
    for h in fleet.hosts:
        rel = report["released"][h.name]["release"]
        assert rel["state"] == "released" and rel["sent_at"] >= snap["end"], rel
    for h in fleet.hosts:
        v = verdict["hosts"][h.name]
        assert v["frozen_from"] <= snap["start"] and v["frozen_until"] >= snap["end"], v
        # released at once after the step: the release, not a clock, proves the end
        assert v["frozen_until_by"] == "release", v
        # the host measured its clock from arming to the end of its freeze: no step
        end = report["end"][h.name]
        assert end["clock_stepped"] is False and abs(end["clock_moved"]) < 0.05, end
        assert v["clock"]["uncertainty"] < 5
        assert_resumed(h)
        # the session, its lock and records lived in the host's own /run
        assert host_result(h)["status"] == "success"
    assert not os.path.exists("/run/vmsnap-fleet/group")


def test_check_mode_changes_nothing(fleet):
    rc, out, report, step = group(fleet, check=True)
    assert rc == 0, out
    assert step is None
    for h in fleet.hosts:
        assert h.frozen() == "thawed" and events(h) == [] and host_result(h) is None


def test_hosts_listen_only_on_their_loopback_address(fleet):
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    for h in fleet.hosts:
        pids = {str(p) for p in h.sshd_pids()}
        mine = [line.split()[3] for line in out.splitlines()
                if any("pid=%s," % p in line for p in pids)]
        assert mine == ["%s:%d" % (h.addr, h.port)], (h.name, mine)


# -- faults ---------------------------------------------------------------------

def test_pre_script_fails_on_one_host_no_snapshot_all_resumed(fleet):
    bad = fleet.hosts[1]
    for h in fleet.hosts:
        h.configure(continue_on_failure=False, pre_exit=1 if h is bad else 0)
    rc, out, report, step = group(fleet, continue_on_failure=False)
    assert rc != 0
    verdict = report["verdict"]
    assert verdict["status"] == "failed" and verdict["consistency"] is None
    assert verdict["broken_by"] == [bad.name], verdict["msg"]
    assert "did not freeze" in verdict["hosts"][bad.name]["reason"]
    assert "Pre-ScriptExecutionFailed" in verdict["hosts"][bad.name]["reason"]
    assert step is None, "the snapshot step ran although a host could not be quiesced"
    for h in fleet.hosts:
        assert_resumed(h)      # the failed host's post-script too: its pre-script ran
    assert codes(host_result(bad)) == ["Pre-ScriptExecutionFailed"]


def test_pre_script_fails_on_one_host_and_the_group_goes_on(fleet):
    bad = fleet.hosts[1]
    bad.configure(pre_exit=1)
    rc, out, report, step = group(fleet)
    assert rc == 0, out
    verdict = report["verdict"]
    assert (verdict["status"], verdict["consistency"]) == ("degraded", "filesystem"), verdict
    assert bad.name in verdict["msg"]
    assert step["start"] == step["end"] == {h.name: "frozen" for h in fleet.hosts}
    for h in fleet.hosts:
        assert_resumed(h)


@pytest.mark.parametrize("continue_on_failure", [True, False])
def test_freeze_fails_on_one_host(fleet, continue_on_failure):
    bad = fleet.hosts[2]
    # a filesystem that cannot be frozen: shut down, FIFREEZE fails with EIO
    p = bad.run(["xfs_io", "-x", "-c", "shutdown", bad.mnt])
    assert p.returncode == 0, p.stderr
    rc, out, report, step = group(fleet, continue_on_failure=continue_on_failure)
    verdict = report["verdict"]
    assert verdict["broken_by"] == [bad.name], verdict["msg"]
    assert "FsFreezeFailed" in verdict["hosts"][bad.name]["reason"]
    if continue_on_failure:
        assert rc == 0, out
        assert (verdict["status"], verdict["consistency"]) == ("degraded", "crash")
        assert step["start"][bad.name] != "frozen"       # the truth the verdict names
    else:
        assert rc != 0 and verdict["status"] == "failed" and verdict["consistency"] is None
    for h in fleet.hosts:
        if h is not bad:
            assert_resumed(h)
    assert events(bad) == ["pre", "post"]


def test_unreachable_host_mid_window_is_thawed_by_its_lease(fleet):
    lost = fleet.hosts[1]
    lease = 15
    t0 = time.monotonic()
    rc, out, report, step = group(fleet, lease=lease, kill_sshd=[lost.name])
    verdict = report["verdict"]
    assert (verdict["status"], verdict["consistency"], verdict["broken_by"]) == \
        ("degraded", "crash", [lost.name]), verdict["msg"]
    assert "unreachable after the freeze" in verdict["hosts"][lost.name]["reason"]
    for h in fleet.hosts:
        if h is not lost:
            assert_resumed(h)
    # nobody can reach it: its lease thaws it and vmsnap resumes the application
    wait_for(lambda: host_result(lost) is not None, lease + 30, "the lost host's run ends")
    assert time.monotonic() - t0 < lease + 60
    assert lost.frozen() == "thawed"
    assert events(lost) == ["pre", "post"]
    assert codes(host_result(lost)) == ["FsFreezeTimeout"]


def test_snapshot_command_fails_every_host_records_it(fleet):
    rc, out, report, step = group(fleet, exit=1)
    assert rc != 0
    verdict = report["verdict"]
    assert verdict["status"] == "failed" and verdict["consistency"] is None
    assert "snapshot step failed" in verdict["msg"]
    for h in fleet.hosts:
        assert_resumed(h)
        res = host_result(h)
        assert res["status"] == "failed" and codes(res) == ["SnapshotFailed"], h.name


@pytest.mark.parametrize("playbook,says", [
    ("group_serial.yml", "the play runs its hosts in batches (serial): 1 of 3"),
    ("group_free.yml", "this play runs with strategy free"),
])
def test_a_play_whose_hosts_do_not_move_in_step_is_refused(fleet, playbook, says):
    """serial would take one snapshot per batch; strategy free would run the
    role's once-only tasks (the instant, the snapshot step) once per host:
    refused before any host quiesces, and no snapshot is taken."""
    rc, out, report, step = group(fleet, playbook=playbook)
    assert rc != 0 and says in out, out[-3000:]
    assert step is None and not os.path.exists(os.path.join(fleet.base, "step-started"))
    for h in fleet.hosts:
        assert h.frozen() == "thawed", h.name
        assert events(h) == [], h.name     # no pre-script ran


def test_a_hung_snapshot_command_is_stopped_before_the_leases_end(fleet):
    """The snapshot command never ends: the role stops it (with what it
    started) before the hosts' leases would thaw them, every host is released
    as failed and resumes, and the play fails saying why, well before the
    command's own 300 s."""
    lease = 15
    t = time.monotonic()
    rc, out, report, step = group(fleet, lease=lease, sleep=300)
    assert rc != 0 and time.monotonic() - t < 120, out[-3000:]
    assert report["snapshot"].get("timed_out"), report["snapshot"]
    assert "did not end within" in report["snapshot"]["msg"]
    assert report["verdict"]["status"] == "failed"
    for h in fleet.hosts:
        assert_resumed(h)
        # released by the role (the step failed), not thawed by its lease
        assert codes(host_result(h)) == ["SnapshotFailed"], (h.name, host_result(h)["errors"])


def test_controller_killed_mid_window_every_host_thaws_and_resumes(fleet):
    lease = 15
    p = group(fleet, lease=lease, sleep=300, background=True)
    started = os.path.join(fleet.base, "step-started")
    wait_for(lambda: os.path.exists(started) or p.poll() is not None, 120, "the snapshot step")
    assert p.poll() is None, "ansible-playbook ended before the window"
    for h in fleet.hosts:
        assert h.frozen() == "frozen", h.name
    # the controller dies: ansible-playbook and every worker (each has a
    # session of its own, so a signal to the playbook's group misses them)
    doomed = descendants(p.pid)
    t_kill = time.monotonic()
    os.killpg(p.pid, 9)
    for pid in doomed:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    p.wait()
    for h in fleet.hosts:
        wait_for(lambda h=h: host_result(h) is not None, lease + 30, "%s's run ends" % h.name)
    assert time.monotonic() - t_kill < lease + 30
    for h in fleet.hosts:
        assert_resumed(h)
        assert codes(host_result(h)) == ["FsFreezeTimeout"], h.name


# -- the module on one host -------------------------------------------------------

def test_module_freeze_thaw_is_idempotent_and_check_mode_touches_nothing(fleet):
    h = fleet.hosts[0]
    res = fleet.module(h, {"command": "freeze", "lease": 20, "mounts": h.mnts}, check=True)
    assert res["changed"] and h.frozen() == "thawed"
    res = fleet.module(h, {"command": "freeze", "lease": 20, "mounts": h.mnts})
    assert res["changed"] and res["status"] == "frozen" and h.frozen() == "frozen"
    assert res["called_at"] <= res["returned_at"] < res["lease_deadline"]
    assert abs(res["clock"]["offset"]) <= res["clock"]["uncertainty"] + 0.05   # same machine
    res = fleet.module(h, {"command": "thaw"})
    assert res["changed"] and res["status"] == "thawed" and h.frozen() == "thawed"
    res = fleet.module(h, {"command": "thaw"})
    assert not res["changed"] and res["status"] == "nothing"


def test_module_run_returns_the_result_and_check_mode_is_a_dry_run(fleet):
    h = fleet.hosts[2]
    args = {"command": "run", "lease": 20, "mounts": h.mnts, "config": h.config,
            "snapshot": ["true"], "log_file": ""}
    res = fleet.module(h, args, check=True)
    assert res["changed"] and events(h) == [] and h.frozen() == "thawed"   # would change
    res = fleet.module(h, args)
    assert res["changed"] and (res["status"], res["consistency"]) == ("success", "application")
    assert res["rc"] == 0 and events(h) == ["pre", "post"]
    status = fleet.module(h, {"command": "status"})
    assert not status["changed"] and status["frozen"] == []


# -- freezing together at an instant (arm, then T) ------------------------------------

def test_a_host_armed_but_never_told_when_to_freeze_never_freezes_and_resumes_by_its_lease(fleet):
    """The controller arms a host and is gone before it tells the instant
    (killed, cut off): the host stays thawed, and by its lease its run gives
    up, says why, and runs the post-script."""
    h = fleet.hosts[0]
    lease = 8
    t0 = time.monotonic()
    res = fleet.module(h, {"command": "arm", "group": "group", "lease": lease, "mounts": h.mnts,
                           "config": h.config})
    assert res["changed"] and res["armed_at"] and res["freeze_at_file"], res
    assert events(h) == ["pre"]
    # armed: quiesced, not frozen, while it waits to be told
    for _ in range(3):
        assert h.frozen() == "thawed"
        assert host_result(h) is None
        time.sleep(1)
    wait_for(lambda: host_result(h) is not None, lease + 20, "the armed host's run ends")
    assert time.monotonic() - t0 < lease + 20
    assert h.frozen() == "thawed"
    assert events(h) == ["pre", "post"]
    res = host_result(h)
    assert codes(res) == ["FsFreezeFailed"], res
    assert "never told when to freeze" in res["errors"][0]["message"]
    assert not res["freeze"]["mounts"]   # nothing was ever frozen


def test_a_host_told_too_late_does_not_freeze_and_the_verdict_says_so(fleet):
    """One host learns the instant only after the latest instant its freeze
    could still cover the step (here: its own settle time made negative, so
    its latest instant is 2 s before the instant itself): it does not
    freeze late silently; its run says why, and the group is not
    application-consistent."""
    late = fleet.hosts[2]
    inventory = os.path.join(fleet.base, "inventory.yml")
    with open(inventory) as f:
        inv = json.load(f)
    inv["fleet"]["hosts"][late.name]["consistency_group_freeze_settle"] = -4
    with open(inventory, "w") as f:
        json.dump(inv, f)
    rc, out, report, step = group(fleet)
    assert rc == 0, out
    verdict = report["verdict"]
    assert (verdict["status"], verdict["consistency"], verdict["broken_by"]) == \
        ("degraded", "crash", [late.name]), verdict["msg"]
    reason = verdict["hosts"][late.name]["reason"]
    assert "did not freeze" in reason and "past the latest useful instant" in reason, reason
    # the truth: the late host was never frozen, the others were across the step
    assert step["start"][late.name] == step["end"][late.name] == "thawed"
    for h in fleet.hosts:
        if h is not late:
            assert step["start"][h.name] == step["end"][h.name] == "frozen"
        assert_resumed(h)
    assert codes(host_result(late)) == ["FsFreezeFailed"]


def test_the_snapshot_step_module_waits_then_reads_as_command(fleet, tmp_path):
    """vmsnap_snapshot_step on its own (the role runs the step through the
    release now; the module is still the collection's): it runs the command
    once not_before has passed, and its result reads as ansible.builtin.command's."""
    ran_at, out = tmp_path / "ran_at", tmp_path / "out.json"
    not_before = time.time() + 1.0
    rc, log = fleet.playbook("snapshot_step.yml", {
        "step_argv": ["/bin/sh", "-c", "date +%%s.%%N > %s; echo said; exit 3" % ran_at],
        "step_not_before": not_before, "step_out": str(out)})
    assert rc == 0, log
    res = json.loads(out.read_text())
    assert res["rc"] == 3 and res["failed"] and res["stdout"].strip() == "said", res
    assert float(ran_at.read_text()) >= not_before
    assert res["start"] and res["end"] and res["end_epoch"] >= not_before
