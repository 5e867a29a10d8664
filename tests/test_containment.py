"""What vmsnap starts gets fds 0-2 only and umask 022; a timed-out script's
whole tree dies (setsid and double-forked children too), by cgroup v2 or, as
fallback, as child subreaper; a successful script's background processes
are left alone and can still print; the reaper kills by cgroup or verified
identity (never a reused group id), says when its table is full, and runs
the resume command once the processes it waits for are gone."""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys
import threading
import time

import pytest

from vmsnap_native import process, run_process
from vmsnap_native._core import COMPAT_FLAGS, core

PR_SET_CHILD_SUBREAPER = 36
CONTAINMENTS = {"cgroup": "", "subreaper": "cgroup"}   # mode -> VMSNAP_COMPAT_DISABLE


def have_cgroup2() -> bool:
    """A cgroup v2 to use: mounted, we are root, and not switched off for this run."""
    if {"cgroup", "all"} & set(os.environ.get("VMSNAP_COMPAT_DISABLE", "").split(",")):
        return False
    with open("/proc/self/mountinfo") as f:
        return any(" - cgroup2 " in line for line in f) and os.geteuid() == 0


@pytest.fixture(params=list(CONTAINMENTS))
def containment(request):
    """Runs the test with each containment: in this process (compat flags)
    and, through VMSNAP_COMPAT_DISABLE, in the controllers it starts."""
    mode = request.param
    if mode == "cgroup" and not have_cgroup2():
        pytest.skip("no cgroup v2 here, or switched off for this run")
    _, lib = core()
    old = lib.vmsnap_compat_disable(0)
    lib.vmsnap_compat_disable(old | (COMPAT_FLAGS["cgroup"] if mode == "subreaper" else 0))
    try:
        yield mode
    finally:
        lib.vmsnap_compat_disable(old)
        # the suite's other tests must not inherit orphans as zombies of ours
        ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def controller_env(mode: str, **extra) -> dict:
    env = dict(os.environ, **extra)
    flags = [f for f in (os.environ.get("VMSNAP_COMPAT_DISABLE", ""), CONTAINMENTS[mode]) if f]
    env["VMSNAP_COMPAT_DISABLE"] = ",".join(flags)
    return env


def alive(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def starttime(pid: int) -> int:
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def gone_soon(pids, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def read_pids(*files, timeout: float = 5.0) -> list:
    end = time.monotonic() + timeout
    while not all(os.path.exists(f) and open(f).read().strip() for f in files):
        assert time.monotonic() < end, "the script did not write its pid files"
        time.sleep(0.01)
    return [int(open(f).read()) for f in files]


# --- fds and umask -------------------------------------------------------------

@pytest.mark.parametrize("compat", ["", "close_range"], ids=["close_range", "fallback"])
def test_only_fds_0_to_2_and_umask_022_reach_the_child_and_its_background(compat, tmp_path):
    _, lib = core()
    old = lib.vmsnap_compat_disable(0)
    lib.vmsnap_compat_disable(old | (COMPAT_FLAGS[compat] if compat else 0))
    leaked = os.open("/dev/null", os.O_RDONLY)   # inheritable: what an agent may leave open
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    high = os.dup2(leaked, min(9000, soft - 1), inheritable=True)   # far above the first fds
    old_umask = os.umask(0)
    try:
        bg = tmp_path / "bg"
        r = run_process(["sh", "-c", "ls /proc/$$/fd; umask; "
                         "(sleep 0.2; ls /proc/self/fd > %s) & exit 0" % bg], timeout=10)
    finally:
        os.umask(old_umask)
        os.close(leaked)
        os.close(high)
        lib.vmsnap_compat_disable(old)
    lines = r.output.split()
    assert sorted(lines[:-1]) == ["0", "1", "2"], r.output
    assert lines[-1] == "0022"
    deadline = time.monotonic() + 5
    while not (bg.exists() and bg.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # ls's own directory fd is 3
    assert sorted(bg.read_text().split()) == ["0", "1", "2", "3"]


# --- the whole tree at a timeout -------------------------------------------------

@pytest.mark.timing
def test_timeout_kills_setsid_and_double_forked_children(containment, tmp_path):
    p1, p2 = tmp_path / "p1", tmp_path / "p2"
    script = ("setsid sh -c 'echo $$ > %s; exec sleep 300' & "
              "( setsid sh -c 'echo $$ > %s; exec sleep 300' & ) ; sleep 100" % (p1, p2))
    t0 = time.monotonic()
    r = run_process(["sh", "-c", script], timeout=1.0, grace=0.3)
    pids = read_pids(p1, p2)
    try:
        assert r.timed_out and r.survivors == 0
        assert r.containment == containment
        assert time.monotonic() - t0 < 6
        assert gone_soon(pids, 2.0), "children that left the group survived the timeout"
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    if containment == "cgroup":
        assert not os.path.exists(r.cgroup), "the emptied cgroup was left behind"


def cgroup2_root() -> str:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if " - cgroup2 " in line:
                return line.split()[4]
    raise AssertionError("no cgroup2 mounted")


class CgroupWrites:
    """Watches (inotify IN_MODIFY) which of a cgroup's control files are written:
    a write through the VFS to a cgroupfs file is an IN_MODIFY event."""

    IN_MODIFY, IN_NONBLOCK = 0x2, 0o4000

    def __init__(self, cgroup_dir: str, names):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(self.IN_NONBLOCK)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        self.wds = {}
        for name in names:
            path = os.path.join(cgroup_dir, name)
            if os.path.exists(path):
                wd = self.libc.inotify_add_watch(self.fd, os.fsencode(path), self.IN_MODIFY)
                assert wd >= 0, (path, os.strerror(ctypes.get_errno()))
                self.wds[wd] = name
        self.written = set()

    def drain(self):
        import struct
        while True:
            try:
                buf = os.read(self.fd, 4096)
            except BlockingIOError:
                return self.written
            while buf:
                wd, mask, _, n = struct.unpack_from("iIII", buf)
                if mask & self.IN_MODIFY and wd in self.wds:
                    self.written.add(self.wds[wd])
                buf = buf[16 + n:]

    def close(self):
        os.close(self.fd)


def test_timeout_without_cgroup_kill_freezes_and_kills_each(tmp_path):
    """Before cgroup.kill (5.14) the tree is frozen (cgroup.freeze), each
    member SIGKILLed, then thawed: the test sees cgroup.freeze written and
    cgroup.kill never."""
    if not have_cgroup2():
        pytest.skip("no cgroup v2 here")
    _, lib = core()
    old = lib.vmsnap_compat_disable(0)
    lib.vmsnap_compat_disable(old | COMPAT_FLAGS["cgroup_kill"])
    p1, cg, go = tmp_path / "p1", tmp_path / "cgroup", tmp_path / "go"
    box = {}

    def watch():   # once the script says where it runs: watch its cgroup, then let it go on
        end = time.monotonic() + 10
        while not (cg.exists() and cg.read_text().endswith("\n")) and time.monotonic() < end:
            time.sleep(0.005)
        path = cgroup2_root() + cg.read_text().strip().split("::", 1)[1]
        box["w"] = CgroupWrites(path, ["cgroup.freeze", "cgroup.kill"])
        box["path"] = path
        go.touch()

    th = threading.Thread(target=watch)
    th.start()
    try:
        r = run_process(["sh", "-c", "cat /proc/self/cgroup > %s; while [ ! -e %s ]; do sleep 0.01; "
                         "done; setsid sh -c \"trap '' TERM; echo \\$\\$ > %s; "
                         "while :; do sleep 1; done\" & sleep 100" % (cg, go, p1)],
                        timeout=2.5, grace=0.2)
    finally:
        lib.vmsnap_compat_disable(old)
        th.join(10)
    w = box["w"]
    try:
        written = w.drain()
    finally:
        w.close()
    (pid,) = read_pids(p1)
    assert r.timed_out and r.containment == "cgroup" and r.survivors == 0
    assert os.path.samefile(os.path.dirname(r.cgroup), os.path.dirname(box["path"])) and \
        os.path.basename(r.cgroup) == os.path.basename(box["path"])
    assert gone_soon([pid], 2.0)
    assert "cgroup.freeze" in written, "the fallback (freeze, kill each, thaw) did not run"
    assert "cgroup.kill" not in written, "cgroup.kill was written although switched off"


# --- a successful script's background processes --------------------------------------

@pytest.mark.timing
def test_background_of_a_successful_script_is_left_alone_and_can_print(containment, tmp_path):
    marker, pidf = tmp_path / "marker", tmp_path / "pid"
    # a lock holder without redirections: it prints after the script is gone
    script = ("sh -c 'echo $$ > %s; sleep 2; echo late notice; echo \"$?\" > %s; sleep 0.5; "
              "echo more; echo done >> %s' & echo started" % (pidf, marker, marker))
    t0 = time.monotonic()
    r = run_process(["sh", "-c", script], timeout=10)
    # returned at the script's exit, well before the background process prints
    assert r.ok and r.output == "started\n" and time.monotonic() - t0 < 1.5
    (pid,) = read_pids(pidf)
    assert alive(pid), "the background process was not left alone"
    end = time.monotonic() + 8
    while "done" not in (marker.read_text() if marker.exists() else ""):
        assert time.monotonic() < end, "the background process died printing (SIGPIPE)"
        time.sleep(0.02)
    assert marker.read_text().split() == ["0", "done"]
    assert r.containment == containment
    if containment == "cgroup":
        # emptied once the background process (and its drainer) ended: removed by a later run
        end = time.monotonic() + 5
        while os.path.exists(r.cgroup) and time.monotonic() < end:
            run_process(["true"], timeout=5)
            time.sleep(0.05)
        assert not os.path.exists(r.cgroup)


# --- the reaper ---------------------------------------------------------------------------

KEEP_WATCHED = """
import sys
from vmsnap_native import process
r = process.Process(["sh", "-c", sys.argv[1]]).wait(timeout=10, keep_watched=True)
print(r.containment, flush=True)
sys.stdin.readline()
"""


def test_controller_sigkill_kills_the_kept_tree_including_setsid(containment, tmp_path):
    p1, p2 = tmp_path / "p1", tmp_path / "p2"
    script = ("setsid sh -c 'echo $$ > %s; exec sleep 300' & "
              "sh -c 'echo $$ > %s; exec sleep 300' & echo ok" % (p1, p2))
    ctl = subprocess.Popen([sys.executable, "-c", KEEP_WATCHED, script], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True, env=controller_env(containment))
    try:
        assert ctl.stdout.readline().strip() == containment
        pids = read_pids(p1, p2)
        assert all(alive(p) for p in pids)
        ctl.kill()
        ctl.wait()
        assert gone_soon(pids, 5.0), "the reaper left the lock session running"
    finally:
        ctl.kill()
        for p in read_pids(p1, p2):
            if alive(p):
                os.kill(p, signal.SIGKILL)


RUNNING = """
import sys
from vmsnap_native import process
proc = process.Process(["sh", "-c", sys.argv[1]])
print(proc.containment, flush=True)
sys.stdin.readline()
"""


def test_controller_sigkill_kills_a_running_script_and_its_setsid_child(containment, tmp_path):
    p1, p2 = tmp_path / "p1", tmp_path / "p2"
    script = "setsid sh -c 'echo $$ > %s; exec sleep 300' & echo $$ > %s; sleep 300" % (p1, p2)
    ctl = subprocess.Popen([sys.executable, "-c", RUNNING, script], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True, env=controller_env(containment))
    try:
        assert ctl.stdout.readline().strip() == containment
        pids = read_pids(p1, p2)
        ctl.kill()
        ctl.wait()
        assert gone_soon(pids, 5.0), "the script's setsid child outlived the controller"
    finally:
        ctl.kill()
        for p in read_pids(p1, p2):
            if alive(p):
                os.kill(p, signal.SIGKILL)


REUSE = """
import sys
from vmsnap_native import process
from vmsnap_native._core import core
proc = process.Process(["sh", "-c", "sleep 0.5 & exit 0"])
r = proc.wait(timeout=10, keep_watched=True)
print(r.pid, r.containment, flush=True)
sys.stdin.readline()
core()[1].vmsnap_proc_tree_count(proc._p)   # as subreaper: reaps the orphans that died as ours
print("reaped", flush=True)
sys.stdin.readline()
"""


def spawn_with_pid(target: int, tries: int = 2000):
    """A new session leader (so pgid == pid) whose pid is TARGET: the reuse
    the reaper must not fall for."""
    for _ in range(tries):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(target - 1))
        p = subprocess.Popen(["sleep", "60"], start_new_session=True)
        if p.pid == target:
            return p
        p.kill()
        p.wait()
    # not a skip: the row has no other test, and a skip in CI would hide its failure
    pytest.fail("could not get pid %d back in %d tries (other processes took it)"
                % (target, tries))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (ns_last_pid)")
def test_reaper_does_not_kill_a_group_that_reused_a_registered_id(containment, tmp_path):
    ctl = subprocess.Popen([sys.executable, "-c", REUSE], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True, env=controller_env(containment))
    try:
        pid, mode = ctl.stdout.readline().split()
        assert mode == containment
        pgid = int(pid)
        end = time.monotonic() + 5
        while [d for d in os.listdir("/proc") if d.isdigit() and _pgrp(int(d)) == pgid]:
            assert time.monotonic() < end
            time.sleep(0.05)
        ctl.stdin.write("reap\n")
        ctl.stdin.flush()
        assert ctl.stdout.readline().strip() == "reaped"
        while [d for d in os.listdir("/proc") if d.isdigit() and _pgrp(int(d), True) == pgid]:
            assert time.monotonic() < end, "the group's zombies were never reaped"
            time.sleep(0.05)
        # the group is gone and its id is someone else's now
        stranger = spawn_with_pid(pgid)
        try:
            assert os.getpgid(stranger.pid) == pgid
            ctl.kill()
            ctl.wait()
            time.sleep(1.0)
            assert stranger.poll() is None, "the reaper killed an unrelated group by a stale id"
        finally:
            stranger.kill()
            stranger.wait()
    finally:
        ctl.kill()
        ctl.wait()


def _pgrp(pid: int, zombies: bool = False):
    try:
        with open("/proc/%d/stat" % pid) as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return None if rest[0] in "ZX" and not zombies else int(rest[2])
    except OSError:
        return None


FILL = """
import sys, subprocess
from vmsnap_native import process
from vmsnap_native._core import core
victim = subprocess.Popen(["sleep", "60"])
st = int(open("/proc/%d/stat" % victim.pid).read().rsplit(")", 1)[1].split()[19])
for key in range(1, core()[1].VMSNAP_REAPER_SLOTS + 1):
    process.watch_identity(key, victim.pid, st)
try:
    process.watch_identity(10**6, victim.pid, st)
    print("registered past the end")
except process.ReaperError as exc:
    print("full:", exc.errno == 28)
try:
    process.run_process(["sh", "-c", "sleep 300; : vmsnap-full-table"], timeout=30)
    print("ran unprotected")
except process.ReaperError as exc:
    print("refused:", exc)
victim.kill()
"""


def test_a_full_reaper_table_is_an_error_and_nothing_runs_unprotected():
    out = subprocess.run([sys.executable, "-c", FILL], capture_output=True, text=True,
                         timeout=60)
    lines = out.stdout.splitlines()
    assert lines[0] == "full: True", out.stdout + out.stderr
    assert lines[1].startswith("refused:") and "table is full" in lines[1]
    assert "vmsnap-full-table" not in subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                                     text=True).stdout


RESUME = """
import os, sys
from vmsnap_native import process
guard, st, marker = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
process.set_resume_command(
    ["sh", "-c", 'echo "$WHO $(umask) $(ls /proc/$$/fd | wc -l)" > "$1"', "sh", marker],
    env={"WHO": "resumed", "PATH": "/usr/bin:/bin"}, wait_for=[(guard, st)])
print("set", flush=True)
sys.stdin.readline()
"""


def test_resume_command_runs_after_controller_sigkill_once_the_guardian_is_gone(tmp_path):
    marker = tmp_path / "marker"
    guard = subprocess.Popen(["sleep", "60"])   # stands in for a freeze guardian
    ctl = subprocess.Popen([sys.executable, "-c", RESUME, str(guard.pid),
                            str(starttime(guard.pid)), str(marker)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert ctl.stdout.readline().strip() == "set"
        ctl.kill()
        ctl.wait()
        time.sleep(1.5)
        assert not marker.exists(), "resumed while the guardian was still there"
        guard.kill()
        guard.wait()
        end = time.monotonic() + 5
        while not (marker.exists() and marker.read_text()):
            assert time.monotonic() < end, "the resume command did not run"
            time.sleep(0.02)
        # its environment as given, umask 022, fds 0-2 (and ls's own)
        assert marker.read_text().split() == ["resumed", "0022", "4"]
    finally:
        ctl.kill()
        guard.kill()


def test_resume_command_cleared_does_not_run(tmp_path):
    marker = tmp_path / "marker"
    code = ("import sys; from vmsnap_native import process\n"
            "process.set_resume_command(['touch', sys.argv[1]])\n"
            "process.set_resume_command(None)\n")
    subprocess.run([sys.executable, "-c", code, str(marker)], check=True, timeout=30)
    time.sleep(0.5)
    assert not marker.exists()


def test_resume_command_too_big_is_refused_and_the_old_one_kept():
    with pytest.raises(OSError) as exc:
        process.set_resume_command(["true", "x" * 40000])
    assert "at most" in str(exc.value)
    with pytest.raises(OSError):
        process.set_resume_command(["true"], wait_for=[(1, 1)] * 17)
    process.set_resume_command(None)


def test_subreaper_timeout_spares_the_controllers_other_children(containment):
    # as subreaper, the tree includes orphans adopted since the script started:
    # never another child we started ourselves meanwhile (a guardian, the reaper,
    # another supervised child)
    box = {}
    th = threading.Thread(target=lambda: box.update(r=run_process(
        ["sh", "-c", "sleep 100"], timeout=1.5, grace=0.2)))
    th.start()
    time.sleep(0.3)
    other = process.Process(["sleep", "30"])
    try:
        th.join(10)
        assert box["r"].timed_out and box["r"].containment == containment
        assert alive(other.pid), "a timeout killed another child of the controller"
        assert alive(process.reaper_pid())
    finally:
        os.kill(other.pid, signal.SIGKILL)
        other.wait()


def test_exec_and_chdir_failures_are_reported_and_leave_no_cgroup(tmp_path):
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x7fELF\x02not really")   # executable, not a format the kernel knows
    garbage.chmod(0o700)
    base = os.path.dirname(run_process(["true"], timeout=5).cgroup or "/nonexistent/x")

    def ours():
        if not os.path.isdir(base):
            return set()
        return {d for d in os.listdir(base) if d.startswith("%d-" % os.getpid())}

    before = ours()
    r = run_process([str(garbage)], timeout=5)
    assert r.exit_code == 126 and "Exec format error" in r.spawn_error and r.pid is None
    r = run_process(["true"], timeout=5, cwd=tmp_path / "missing")
    assert r.exit_code == 127 and "No such file" in r.spawn_error
    assert ours() <= before, "cgroups left behind: %s" % (ours() - before)


def test_cgroups_emptied_after_their_release_are_removed_when_the_controller_exits():
    if not have_cgroup2():
        pytest.skip("no cgroup v2 here")
    code = ("import time; from vmsnap_native import run_process\n"
            "r = run_process(['sh', '-c', 'sleep 0.3 & echo x'], timeout=5)\n"
            "print(r.cgroup, flush=True); time.sleep(1)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, env=controller_env("cgroup"))
    path = out.stdout.strip()
    assert path.startswith("/"), out.stderr
    end = time.monotonic() + 5
    while os.path.exists(path):
        assert time.monotonic() < end, "the controller's emptied cgroup was left behind"
        time.sleep(0.05)
