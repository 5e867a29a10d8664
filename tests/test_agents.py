"""`vmsnap hook AGENT PHASE`: vmsnap as the freeze hook of qemu-ga (the real
agent, over its socket), VMware Tools, the Google guest agent and AWS DLM,
each called exactly as that agent calls it, on loop filesystems only."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from .conftest import frozen_state, root_only, thawed_soon
from .helpers import run_json, setup_scripts, write_config, write_script

pytestmark = root_only

QEMU_GA = shutil.which("qemu-ga") or "/usr/sbin/qemu-ga"


# -- scaffolding ------------------------------------------------------------------

@pytest.fixture
def runtime(tmp_path, monkeypatch):
    """A runtime dir of this test's own (the session file, the run lock); at
    the end any open session is closed without running anything more."""
    rdir = tmp_path / "run"
    monkeypatch.setenv("VMSNAP_RUNTIME_DIR", str(rdir))
    # a call that misses its --config (a test's point, or a bug) freezes nothing
    safe = tmp_path / "safe"
    safe.mkdir()
    monkeypatch.setenv("VMSNAP_CONFIG", write_config(safe / "config.json", mountsToFreeze=[]))
    yield str(rdir)
    for path in glob.glob(os.path.join(str(rdir), "hook-*.json")):
        try:
            with open(path) as f:
                state = json.load(f)
        except (OSError, ValueError):
            continue
        for m in state.get("selection", []):
            subprocess.run(["fsfreeze", "-u", m["mountpoint"]], capture_output=True)
        wd = (state.get("watchdog") or {}).get("pid")
        if wd:   # the session ends as a stopped one: thaw, thaw hooks, post-script
            try:
                os.kill(wd, signal.SIGTERM)
            except ProcessLookupError:
                continue
            wait_for(lambda pid=wd: not alive(pid), 60)


def stamping_config(tmp_path, mounts, pre_extra="", post_extra="", **fields):
    """Pre- and post-scripts that append 'NAME MONOTONIC_NS' to a marker file
    (on /tmp, never on a frozen filesystem) and write a file on the first
    loop filesystem: that write succeeds only while it is not frozen."""
    mark = tmp_path / "marks"
    stamp = ("%s -c 'import sys, time; print(sys.argv[1], time.monotonic_ns())' \"$1\" >> %s"
             % (sys.executable, mark))
    pre = "stamp() { %s; }\n%s\necho pre > %s/pre-was-here\nstamp pre" % (
        stamp, pre_extra, mounts[0])
    post = "stamp() { %s; }\necho post > %s/post-was-here\nstamp post\n%s" % (
        stamp, mounts[0], post_extra)
    fields.setdefault("mountsToFreeze", list(mounts))
    fields.setdefault("freezeTimeoutInSeconds", 30)
    return setup_scripts(tmp_path, pre=pre, post=post, **fields), mark


def marks(mark) -> dict:
    out = {}
    try:
        with open(mark) as f:
            for line in f:
                name, ns = line.split()
                out.setdefault(name, []).append(int(ns))
    except FileNotFoundError:
        pass
    return out


def wrapper(tmp_path, agent, config):
    """The root-owned executable an agent calls: `vmsnap hook AGENT` with the
    test's config, log and runtime dir."""
    return write_script(tmp_path / "etc" / ("hook-" + agent),
                        "VMSNAP_RUNTIME_DIR='%s' exec %s -m vmsnap_native hook %s --config %s "
                        "--log-file %s \"$@\"" % (os.environ["VMSNAP_RUNTIME_DIR"], sys.executable,
                                                  agent, config, tmp_path / "vmsnap.log"))


def hook(tmp_path, agent, config, *argv, timeout=120):
    """Calls the hook the way a process-spawning agent does: argv, stdin /dev/null."""
    return subprocess.run([wrapper(tmp_path, agent, config), *argv], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def log_results(tmp_path) -> list:
    out = []
    try:
        with open(tmp_path / "vmsnap.log") as f:
            for line in f:
                if " INFO result {" in line:
                    out.append(json.loads(line.split(" INFO result ", 1)[1]))
    except FileNotFoundError:
        pass
    return out


def alive(pid) -> bool:
    """Running, not a zombie (this container's init may not reap orphans)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except FileNotFoundError:
        return False


def wait_for(pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


# -- the real QEMU guest agent ------------------------------------------------------------

class QemuGuestAgent:
    """qemu-ga on a unix socket, with no system paths: state, pidfile and log in TMP."""

    def __init__(self, tmp_path, hook_path):
        self.dir = tmp_path / "qga"
        self.dir.mkdir()
        self.sock_path = str(self.dir / "qga.sock")
        self.proc = subprocess.Popen(
            [QEMU_GA, "-m", "unix-listen", "-p", self.sock_path, "-F%s" % hook_path,
             "-t", str(self.dir), "-f", str(self.dir / "qga.pid"), "-l", str(self.dir / "qga.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for(lambda: os.path.exists(self.sock_path), 10), "qemu-ga did not listen"
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(120)
        self.sock.connect(self.sock_path)
        self.reader = self.sock.makefile("rb")
        self.sync()

    def _send(self, obj):
        self.sock.sendall(json.dumps(obj).encode() + b"\n")
        while True:
            line = self.reader.readline()
            if not line:
                raise ConnectionError("qemu-ga closed the connection")
            if line.strip():
                return json.loads(line)

    def sync(self):
        token = int(time.monotonic_ns() % 1_000_000_007)
        reply = self._send({"execute": "guest-sync", "arguments": {"id": token}})
        assert reply.get("return") == token, reply

    def call(self, command, **arguments):
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        return self._send(msg)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def close(self):
        try:
            self.sock.close()
        finally:
            self.kill()


@pytest.fixture
def qga_factory(tmp_path):
    if not os.access(QEMU_GA, os.X_OK):
        pytest.skip("qemu-ga is not installed (apt-get install qemu-guest-agent)")
    agents = []

    def start(hook_path):
        agents.append(QemuGuestAgent(tmp_path, hook_path))
        return agents[-1]

    yield start
    for a in agents:
        a.close()


def test_qemu_ga_order_pre_freeze_thaw_post(tmp_path, loopfs, runtime, qga_factory):
    mounts = loopfs.make(2)
    config, mark = stamping_config(tmp_path, mounts)
    qga = qga_factory(wrapper(tmp_path, "qemu-ga", config))

    t_freeze_sent = time.monotonic_ns()
    reply = qga.call("guest-fsfreeze-freeze-list", mountpoints=mounts)
    t_frozen = time.monotonic_ns()
    assert reply.get("return") == 2, reply
    assert all(frozen_state(m) for m in mounts)
    assert os.path.exists(os.path.join(runtime, "hook-qemu-ga.json"))
    t_thaw_sent = time.monotonic_ns()
    reply = qga.call("guest-fsfreeze-thaw")
    t_thawed = time.monotonic_ns()
    assert "return" in reply, reply
    assert not any(frozen_state(m) for m in mounts)

    got = marks(mark)
    # the pre-script ran inside the freeze command, before the freeze (its write went through)
    assert t_freeze_sent < got["pre"][0] < t_frozen
    # the post-script ran inside the thaw command, after the thaw (its write went through)
    assert t_thaw_sent < got["post"][0] < t_thawed
    assert len(got["pre"]) == 1 and len(got["post"]) == 1
    assert os.path.exists(os.path.join(mounts[0], "post-was-here"))
    last = log_results(tmp_path)[-1]
    assert last["status"] == "success" and last["consistency"] == "application", last
    assert not os.path.exists(os.path.join(runtime, "hook-qemu-ga.json"))


def test_qemu_ga_abort_runs_post_script_and_no_double_post(tmp_path, loopfs, runtime,
                                                            qga_factory):
    mounts = loopfs.make(2)   # two disks: a failed pre-script with continue=false aborts
    config, mark = stamping_config(tmp_path, mounts, pre_extra="stamp pre; exit 3",
                                   continueBackupOnFailure=False)
    qga = qga_factory(wrapper(tmp_path, "qemu-ga", config))

    reply = qga.call("guest-fsfreeze-freeze-list", mountpoints=mounts)
    assert "error" in reply, reply            # the hook's non-zero exit aborted the freeze
    assert not any(frozen_state(m) for m in mounts)
    assert len(marks(mark).get("post", [])) == 1   # vmsnap ran the post-script itself
    res = log_results(tmp_path)[-1]
    assert res["status"] == "failed" and "Pre-ScriptExecutionFailed" in [
        e["code"] for e in res["errors"]], res

    # libvirt thaws after a failed freeze: that thaw finds no session and runs nothing twice
    reply = qga.call("guest-fsfreeze-thaw")
    assert "return" in reply, reply
    assert len(marks(mark).get("post", [])) == 1


def test_qemu_ga_killed_mid_freeze_watchdog_thaws_and_runs_post(tmp_path, loopfs, runtime,
                                                                qga_factory):
    mounts = loopfs.make(2)
    timeout = 3
    config, mark = stamping_config(tmp_path, mounts, freezeTimeoutInSeconds=timeout)
    qga = qga_factory(wrapper(tmp_path, "qemu-ga", config))

    reply = qga.call("guest-fsfreeze-freeze-list", mountpoints=mounts)
    assert reply.get("return") == 2, reply
    t_frozen = time.monotonic()
    qga.kill()                                 # the agent dies; the host never sends thaw
    assert all(frozen_state(m) for m in mounts)
    assert thawed_soon(mounts, timeout=timeout + 20), "the watchdog did not thaw"
    assert wait_for(lambda: "post" in marks(mark), 20), "the watchdog did not run the post-script"
    assert time.monotonic() - t_frozen >= timeout - 0.5   # not before the deadline
    assert os.path.exists(os.path.join(mounts[0], "post-was-here"))
    assert wait_for(lambda: log_results(tmp_path) and
                    "FsFreezeTimeout" in [e["code"] for e in log_results(tmp_path)[-1]["errors"]],
                    10)
    # the thaw that comes too late says the snapshot is not to be trusted
    p = hook(tmp_path, "qemu-ga", config, "thaw")
    assert p.returncode == 1, p.stderr
    assert len(marks(mark)["post"]) == 1


def test_lock_session_of_pre_script_survives_until_post(tmp_path, loopfs, runtime):
    mounts = loopfs.make(1)
    pidfile = tmp_path / "lock-session.pid"
    config, mark = stamping_config(
        tmp_path, mounts, pre_extra="sleep 300 >/dev/null 2>&1 &\necho $! > %s" % pidfile,
        post_extra="kill $(cat %s)" % pidfile)
    p = hook(tmp_path, "qemu-ga", config, "freeze")
    assert p.returncode == 0, p.stderr
    holder = int(pidfile.read_text())
    time.sleep(0.5)   # the first call's process is gone: its reaper would have acted by now
    assert alive(holder)                  # the lock session is still there
    st = os.stat(os.path.join(runtime, "hook-qemu-ga.json"))
    assert st.st_uid == 0 and st.st_mode & 0o777 == 0o600
    p = hook(tmp_path, "qemu-ga", config, "thaw")
    assert p.returncode == 0, p.stderr
    assert wait_for(lambda: not alive(holder), 5)   # the post-script released it


# -- VMware Tools -----------------------------------------------------------------------------

def vmtools(tmp_path, config, op, script_arg=None):
    """As open-vm-tools' scriptOps.c runs backupScripts.d: one shell command line."""
    path = wrapper(tmp_path, "vmware", config)
    cmd = '"%s" %s "%s"' % (path, op, script_arg) if script_arg else '"%s" %s' % (path, op)
    return subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_vmware_freeze_thaw_with_script_arg(tmp_path, loopfs, runtime):
    mounts = loopfs.make(1)
    config, mark = stamping_config(tmp_path, mounts)
    p = vmtools(tmp_path, config, "freeze", "backup-job-17")
    assert p.returncode == 0, p.stderr
    assert "pre" in marks(mark) and "post" not in marks(mark)
    subprocess.run(["fsfreeze", "-f", mounts[0]], check=True, timeout=30)   # the sync driver
    try:
        assert frozen_state(mounts[0])
    finally:
        subprocess.run(["fsfreeze", "-u", mounts[0]], check=True, timeout=30)
    p = vmtools(tmp_path, config, "thaw", "backup-job-17")
    assert p.returncode == 0, p.stderr
    assert len(marks(mark)["post"]) == 1
    assert log_results(tmp_path)[-1]["status"] == "success"


def test_vmware_freezefail_any_case_runs_post_and_reports_failure(tmp_path, loopfs, runtime):
    mounts = loopfs.make(1)
    config, mark = stamping_config(tmp_path, mounts)
    assert vmtools(tmp_path, config, "freeze").returncode == 0
    p = vmtools(tmp_path, config, "FREEZEFAIL")
    assert p.returncode == 0, p.stderr
    assert len(marks(mark)["post"]) == 1
    assert log_results(tmp_path)[-1]["status"] == "failed"


def test_vmware_failing_freeze_aborts_and_runs_post(tmp_path, loopfs, runtime):
    mounts = loopfs.make(2)
    config, mark = stamping_config(tmp_path, mounts, pre_extra="exit 1",
                                   continueBackupOnFailure=False)
    p = vmtools(tmp_path, config, "freeze")
    assert p.returncode != 0
    assert len(marks(mark).get("post", [])) == 1   # this script gets no freezeFail from vmtoolsd
    assert not os.path.exists(os.path.join(runtime, "hook-vmware.json"))


# -- Google guest agent -----------------------------------------------------------------------

def test_gce_pre_freezes_post_thaws(tmp_path, loopfs, runtime):
    mounts = loopfs.make(2)
    config, mark = stamping_config(tmp_path, mounts)
    p = hook(tmp_path, "gce", config, "pre", "disk-1,disk-2")   # argv: script, disk list
    assert p.returncode == 0, p.stderr
    assert all(frozen_state(m) for m in mounts)    # the guest agent freezes nothing: vmsnap does
    p = hook(tmp_path, "gce", config, "post", "disk-1,disk-2")
    assert p.returncode == 0, p.stderr
    assert not any(frozen_state(m) for m in mounts)
    got = marks(mark)
    assert got["pre"][0] < got["post"][0]
    res = log_results(tmp_path)[-1]
    assert res["consistency"] == "application" and res["status"] == "success", res


def test_gce_pre_script_timeout_exits_124(tmp_path, loopfs, runtime):
    mounts = loopfs.make(2)
    config, mark = stamping_config(tmp_path, mounts, pre_extra="sleep 30", timeoutInSeconds=1,
                                   continueBackupOnFailure=False)
    p = hook(tmp_path, "gce", config, "pre", "disk-1")
    assert p.returncode == 124, p.stderr          # SCRIPT_TIMED_OUT to the guest agent
    assert not any(frozen_state(m) for m in mounts)
    assert len(marks(mark).get("post", [])) == 1


# -- AWS Data Lifecycle Manager -----------------------------------------------------------------

def dlm(tmp_path, config, command):
    """The SSM document's runShellScript, with {{ command }} substituted."""
    path = wrapper(tmp_path, "dlm", config)
    script = "#!/bin/bash\nOPERATION=%s\n\"%s\" \"${OPERATION}\"\n" % (command, path)
    return subprocess.run(["/bin/bash", "-c", script], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def test_dlm_freeze_outlives_pre_script_and_codes(tmp_path, loopfs, runtime):
    mounts = loopfs.make(1)
    config, mark = stamping_config(tmp_path, mounts)
    assert dlm(tmp_path, config, "dry-run").returncode == 0
    assert dlm(tmp_path, config, "post-script").returncode == 205   # no pre-script before
    p = dlm(tmp_path, config, "pre-script")
    assert p.returncode == 0, p.stderr
    assert frozen_state(mounts[0])                                  # held after the call
    assert dlm(tmp_path, config, "pre-script").returncode == 204     # post-script expected
    assert frozen_state(mounts[0])
    p = dlm(tmp_path, config, "post-script")
    assert p.returncode == 0, p.stderr
    assert not frozen_state(mounts[0])
    assert len(marks(mark)["pre"]) == 1 and len(marks(mark)["post"]) == 1


def test_dlm_lease_runs_out_then_203(tmp_path, loopfs, runtime):
    mounts = loopfs.make(1)
    config, mark = stamping_config(tmp_path, mounts, freezeTimeoutInSeconds=2)
    assert dlm(tmp_path, config, "pre-script").returncode == 0
    assert frozen_state(mounts[0])
    assert thawed_soon(mounts, timeout=20)
    assert wait_for(lambda: "post" in marks(mark), 20)   # the watchdog ran the post-script
    assert dlm(tmp_path, config, "post-script").returncode == 203   # auto thaw came first
    assert len(marks(mark)["post"]) == 1


def test_dlm_failures_201_202(tmp_path, loopfs, runtime):
    mounts = loopfs.make(2)
    config, mark = stamping_config(tmp_path, mounts, pre_extra="exit 1",
                                   continueBackupOnFailure=False)
    assert dlm(tmp_path, config, "pre-script").returncode == 201
    assert not any(frozen_state(m) for m in mounts)
    assert len(marks(mark)["post"]) == 1
    config, mark = stamping_config(tmp_path, mounts, post_extra="exit 1")
    assert dlm(tmp_path, config, "pre-script").returncode == 0
    assert dlm(tmp_path, config, "post-script").returncode == 202
    assert not any(frozen_state(m) for m in mounts)


def test_unknown_agent_or_phase_is_a_usage_error(tmp_path, runtime):
    config = setup_scripts(tmp_path, mountsToFreeze=[])
    assert hook(tmp_path, "qemu-ga", config, "frieze").returncode == 2
    p = subprocess.run([sys.executable, "-m", "vmsnap_native", "hook", "hyperv", "freeze"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "unknown agent" in p.stderr


def test_second_freeze_ends_the_open_session_first(tmp_path, loopfs, runtime):
    """qemu-ga and vmtoolsd forget a freeze when they restart: the next
    `freeze` ends the forgotten session (post-script) before beginning."""
    mounts = loopfs.make(1)
    config, mark = stamping_config(tmp_path, mounts)
    assert hook(tmp_path, "qemu-ga", config, "freeze").returncode == 0
    subprocess.run(["fsfreeze", "-f", mounts[0]], check=True, timeout=30)   # the old agent's
    p = hook(tmp_path, "qemu-ga", config, "freeze")
    assert p.returncode == 0, p.stderr
    assert not frozen_state(mounts[0])          # what the forgotten session froze is thawed
    got = marks(mark)
    assert len(got["pre"]) == 2 and len(got["post"]) == 1
    assert got["pre"][0] < got["post"][0] < got["pre"][1]
    assert hook(tmp_path, "qemu-ga", config, "thaw").returncode == 0
    assert len(marks(mark)["post"]) == 2


def test_watchdog_told_to_stop_ends_the_session_at_once(tmp_path, loopfs, runtime):
    """A shutdown SIGTERMs everything: the watchdog thaws and runs the
    post-script then, instead of dying with the guest frozen; it stays until
    the deadline only to thaw what the agent may still freeze, then exits."""
    mounts = loopfs.make(1)
    config, mark = stamping_config(tmp_path, mounts, freezeTimeoutInSeconds=6)
    assert hook(tmp_path, "vmware", config, "freeze").returncode == 0
    subprocess.run(["fsfreeze", "-f", mounts[0]], check=True, timeout=30)   # the sync driver
    with open(os.path.join(runtime, "hook-vmware.json")) as f:
        watchdog_pid = json.load(f)["watchdog"]["pid"]
    t = time.monotonic()
    os.kill(watchdog_pid, signal.SIGTERM)
    assert thawed_soon(mounts, timeout=15)
    assert wait_for(lambda: "post" in marks(mark), 15)
    assert time.monotonic() - t < 5, "not at once"
    assert wait_for(lambda: not alive(watchdog_pid), 15)
    assert len(marks(mark)["post"]) == 1
    assert vmtools(tmp_path, config, "thaw").returncode == 1   # too late: not consistent


def test_dlm_dry_run_reports_not_ready(tmp_path, runtime):
    config = setup_scripts(tmp_path, mountsToFreeze=[])
    os.chmod(config, 0o644)           # a configuration others can read is refused (317)
    p = dlm(tmp_path, config, "dry-run")
    assert p.returncode == 206 and "InsufficientPermissionforJSONConfigFile" in p.stderr


def test_options_after_phase_are_refused(tmp_path, runtime):
    config = setup_scripts(tmp_path, mountsToFreeze=[])
    p = subprocess.run([sys.executable, "-m", "vmsnap_native", "hook", "gce", "pre", "--config",
                        config], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "before PHASE" in p.stderr


def test_refused_post_script_skips_pre_but_not_the_snapshot(tmp_path, loopfs, runtime):
    mounts = loopfs.make(2)
    config, mark = stamping_config(tmp_path, mounts, continueBackupOnFailure=False)
    os.unlink(tmp_path / "etc" / "post.sh")
    p = hook(tmp_path, "qemu-ga", config, "freeze")
    assert p.returncode == 0, p.stderr          # the agent may freeze: filesystem-consistent
    assert "pre" not in marks(mark)             # nothing could resume the application
    p = hook(tmp_path, "qemu-ga", config, "thaw")
    res = log_results(tmp_path)[-1]
    assert "Post-ScriptNotFound" in [e["code"] for e in res["errors"]], res
    # the snapshot stands (the agent took it frozen); false makes the refusal fail the run
    assert res["consistency"] == "filesystem" and res["status"] == "failed", res
    assert res["snapshot"]["exit_code"] == 0, res


def test_hooks_directory_freeze_on_first_phase_thaw_on_last(tmp_path, loopfs, runtime):
    mounts = loopfs.make(1)
    hooks_dir = tmp_path / "hooks.d"
    hooks_dir.mkdir(mode=0o755)
    os.chmod(hooks_dir, 0o755)
    calls = tmp_path / "hook-calls"
    for name in ("10-db", "20-cache"):
        write_script(hooks_dir / name, 'echo "%s $1" >> %s' % (name, calls))
    config, mark = stamping_config(tmp_path, mounts, hooksDirectory=str(hooks_dir))
    assert vmtools(tmp_path, config, "freeze").returncode == 0
    assert calls.read_text().split("\n")[:-1] == ["10-db freeze", "20-cache freeze"]
    assert vmtools(tmp_path, config, "thaw").returncode == 0
    assert calls.read_text().split("\n")[:-1] == ["10-db freeze", "20-cache freeze",
                                                   "20-cache thaw", "10-db thaw"]


def test_no_other_run_while_a_session_is_open(tmp_path, loopfs, runtime):
    mounts = loopfs.make(1)
    config, mark = stamping_config(tmp_path, mounts)
    assert hook(tmp_path, "qemu-ga", config, "freeze").returncode == 0
    status, res, _ = run_json(tmp_path, config, mounts)
    assert status == 1 and [e["code"] for e in res["errors"]] == ["AnotherRunInProgress"], res
    assert len(marks(mark)["pre"]) == 1         # the refused run ran no script
    assert hook(tmp_path, "qemu-ga", config, "thaw").returncode == 0
    status, res, _ = run_json(tmp_path, config, mounts)
    assert status == 0, res                     # the watchdog let go of the lock
