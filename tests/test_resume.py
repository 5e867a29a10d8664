"""The resume after a SIGKILL of vmsnap: the reaper's command imports the
very package the run imported (a vendored copy found only through
PYTHONPATH too), says in the log when it cannot start, never starts while
the freeze guardian is alive, and a run started meanwhile waits for it
instead of being refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import _cffi_backend
import pytest

import vmsnap_native
from vmsnap_native import process

from .conftest import frozen_state, root_only, thawed_soon
from .helpers import setup_scripts

pytestmark = root_only


def wait_for(path, timeout=30.0):
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise AssertionError("%s never appeared" % path)
        time.sleep(0.02)


def wait_text(path, text, timeout=30.0):
    end = time.monotonic() + timeout
    while True:
        got = open(path).read() if os.path.exists(path) else ""
        if text in got:
            return got
        if time.monotonic() > end:
            raise AssertionError("%r never appeared in %s:\n%s" % (text, path, got))
        time.sleep(0.05)


def base_python() -> str:
    """The interpreter under the test venv, outside it: vmsnap is not installed there."""
    exe = os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable)
    probe = subprocess.run([exe, "-c", "import vmsnap_native"], capture_output=True,
                           env={"PATH": "/usr/bin:/bin"})
    if probe.returncode == 0:
        pytest.skip("%s imports an installed vmsnap_native: cannot stand for a venv-less one"
                    % exe)
    return exe


def vendored(tmp_path) -> str:
    """A copy of the package (and the cffi backend it needs) in a directory
    that only PYTHONPATH points at, as an agent that vendors vmsnap has it."""
    vendor = tmp_path / "vendor"
    shutil.copytree(os.path.dirname(vmsnap_native.__file__), vendor / "vmsnap_native",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(_cffi_backend.__file__, vendor)
    return str(vendor)


def test_resume_is_found_in_a_vendored_copy_after_a_sigkill(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    py, vendor = base_python(), vendored(tmp_path)
    cfg = setup_scripts(tmp_path, post="touch %s" % (tmp_path / "post-ran"))
    log = tmp_path / "vmsnap.log"
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": vendor,
           "VMSNAP_RUNTIME_DIR": str(tmp_path / "run")}
    proc = subprocess.Popen([py, "-m", "vmsnap_native", "run", "--config", cfg, "--mount", m,
                             "--log-file", str(log), "--", "sh", "-c",
                             "touch %s; sleep 60" % (tmp_path / "snap")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(tmp_path / "snap")
        assert frozen_state(m)
    finally:
        proc.kill()
        proc.wait()
    assert thawed_soon([m])
    wait_for(tmp_path / "post-ran")
    text = wait_text(log, "resume: post-script done")
    # the very copy the run imported resumed it
    assert "vmsnap from %s" % vendor in text, text


RESUME_THEN_DIE = """
import sys
from vmsnap_native import process
process.set_resume_command(sys.argv[2:], env={"PATH": "/usr/bin:/bin"}, log_file=sys.argv[1])
print("set", flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("argv, said", [
    ([sys.executable, "-m", "no_such_vmsnap_module"], "No module named no_such_vmsnap_module"),
    (["/nonexistent/python3", "-m", "vmsnap_native._resume"],
     "cannot start /nonexistent/python3: No such file or directory"),
    (["/bin/sh", "-c", "kill -9 $$"], "was killed by signal 9"),
])
def test_the_reaper_logs_a_resume_that_cannot_start(tmp_path, argv, said):
    log = tmp_path / "vmsnap.log"
    ctl = subprocess.Popen([sys.executable, "-c", RESUME_THEN_DIE, str(log), *argv],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert ctl.stdout.readline().strip() == "set"
    finally:
        ctl.kill()
        ctl.wait()
    text = wait_text(log, said, timeout=20)
    assert "vmsnap-reaper[" in text and " ERROR resume: " in text
    assert "run the post-script by hand" in text


def test_a_resume_that_logs_its_own_failure_is_not_logged_twice(tmp_path):
    log = tmp_path / "vmsnap.log"
    ctl = subprocess.Popen([sys.executable, "-c", RESUME_THEN_DIE, str(log), "/bin/sh", "-c",
                            "echo 'resume: post-script failed' >> %s; exit 1" % log],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert ctl.stdout.readline().strip() == "set"
    finally:
        ctl.kill()
        ctl.wait()
    wait_text(log, "post-script failed")
    time.sleep(1.0)
    assert "vmsnap-reaper" not in log.read_text()


# -- the guardian first, however long it takes ---------------------------------------

# A writer stuck inside write(2) with the filesystem's write access held: its
# source buffer faults into a userfaultfd nobody serves.  A FIFREEZE then
# waits for it in the kernel (D state) until the fd is closed.
STUCK_WRITER = r"""
import ctypes, fcntl, mmap, os, struct, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
uffd = libc.syscall(323, os.O_CLOEXEC)   # userfaultfd (x86_64)
if uffd < 0:
    print("no userfaultfd: %s" % os.strerror(ctypes.get_errno()), flush=True)
    sys.exit(0)
fcntl.ioctl(uffd, 0xC018AA3F, bytearray(struct.pack("QQQ", 0xAA, 0, 0)))      # UFFDIO_API
mm = mmap.mmap(-1, 4096)
addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
fcntl.ioctl(uffd, 0xC020AA00, bytearray(struct.pack("QQQQ", addr, 4096, 1, 0)))  # REGISTER
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)
threading.Thread(target=os.write, args=(fd, memoryview(mm)), daemon=True).start()
time.sleep(0.3)
print("stuck", flush=True)
sys.stdin.readline()
os.close(uffd)   # the write goes on, the FIFREEZE returns
time.sleep(0.5)
"""


def guardian_of(runtime_dir) -> tuple:
    from vmsnap_native.freeze import _read_record
    end = time.monotonic() + 20
    while time.monotonic() < end:
        for name in os.listdir(runtime_dir) if os.path.isdir(runtime_dir) else ():
            if name.startswith("freeze-") and name.endswith(".rec"):
                try:
                    buf, sh = _read_record(os.path.join(runtime_dir, name))
                except ValueError:
                    continue
                if sh.guardian_pid:   # not the gentle presync's record (no guardian)
                    return int(sh.guardian_pid), int(sh.guardian_starttime)
        time.sleep(0.02)
    raise AssertionError("no freeze record in %s" % runtime_dir)


def test_the_resume_waits_for_a_guardian_stuck_in_fifreeze(tmp_path, loopfs):
    """The guardian's deadline passes while its FIFREEZE is stuck in the
    kernel, and vmsnap is SIGKILLed: the post-script (which writes to that
    filesystem) starts only once the guardian has thawed and exited."""
    (m,) = loopfs.make(1)
    writer = subprocess.Popen([sys.executable, "-c", STUCK_WRITER, os.path.join(m, "stuck")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    run = None
    try:
        said = writer.stdout.readline().strip()
        if said != "stuck":
            pytest.skip(said or "the stuck writer did not start")
        cfg = setup_scripts(tmp_path, pre="touch %s" % (tmp_path / "pre-ran"),
                            post="touch %s; touch %s" % (tmp_path / "post-started",
                                                         os.path.join(m, "post-wrote-here")),
                            timeoutInSeconds=30)
        env = dict(os.environ, VMSNAP_RUNTIME_DIR=str(tmp_path / "run"))
        run = subprocess.Popen(run_cmd(tmp_path, cfg, m, "true") + ["--freeze-timeout", "1"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        gpid, gstart = guardian_of(str(tmp_path / "run"))
        wait_for(tmp_path / "pre-ran")
        time.sleep(2.5)   # past the guardian's deadline (1 s): it is stuck, not holding
        run.kill()
        run.wait()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5:
            assert process.alive(gpid, gstart), "the guardian was not stuck after all"
            assert not (tmp_path / "post-started").exists(), \
                "the resume started while the guardian was still in its FIFREEZE"
            time.sleep(0.1)
    finally:
        writer.stdin.write("\n")
        writer.stdin.flush()
        writer.wait(timeout=30)
        if run is not None and run.poll() is None:
            run.kill()
    assert process.wait_gone(gpid, gstart, 30), "the guardian did not finish once unstuck"
    wait_for(tmp_path / "post-started")
    wait_for(os.path.join(m, "post-wrote-here"))
    assert not frozen_state(m)


# -- a run started while the resume of a killed one is pending or running ----------

def run_cmd(tmp_path, cfg, m, *snapshot, log="vmsnap.log"):
    args = [sys.executable, "-m", "vmsnap_native", "run", "--json", "--config", cfg,
            "--mount", m, "--log-file", str(tmp_path / log)]
    if snapshot:
        args += ["--", *snapshot]
    return args


def test_a_run_right_after_a_sigkill_waits_for_the_resume_and_says_so(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    env = dict(os.environ, VMSNAP_RUNTIME_DIR=str(tmp_path / "run"))
    # the resume's post-script takes a while: the next run comes while it runs
    cfg = setup_scripts(tmp_path, pre="echo pre >> %s" % (tmp_path / "order"),
                        post="echo post-start >> %s; sleep 1.5; echo post-end >> %s"
                        % (tmp_path / "order", tmp_path / "order"), timeoutInSeconds=10)
    first = subprocess.Popen(run_cmd(tmp_path, cfg, m, "sh", "-c",
                                     "touch %s; sleep 60" % (tmp_path / "snap")),
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(tmp_path / "snap")
    finally:
        first.kill()
        first.wait()
    # at once: the resume has not even started, or holds the lock
    second = subprocess.run(run_cmd(tmp_path, cfg, m, log="second.log"), env=env,
                            capture_output=True, text=True, timeout=120)
    res = json.loads(second.stdout)
    assert second.returncode == 0 and res["status"] == "success", second.stderr
    assert any("waited" in w and "resume" in w for w in res["warnings"]), res["warnings"]
    assert "waited" in (tmp_path / "second.log").read_text()
    # the dead run's post-script ended before the second run's pre-script began
    assert (tmp_path / "order").read_text().split() == [
        "pre", "post-start", "post-end", "pre", "post-start", "post-end"]


@pytest.mark.timing
def test_a_run_does_not_wait_for_a_resume_whose_reaper_is_someone_else(tmp_path,
                                                                      monkeypatch):
    """A lock line naming a reaper whose pid now belongs to another process
    (another start time): nothing to wait for."""
    from vmsnap_native.lock import RunLock
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("VMSNAP_RUNTIME_DIR", str(runtime))
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        st = process.starttime(stranger.pid)
        (runtime / "lock").write_text("pid=999999 start=1 role=run reaper=%d:%d until=%d\n"
                                      % (stranger.pid, st + 1, time.monotonic_ns() + 60 * 10**9))
        t0 = time.monotonic()
        with RunLock() as lk:
            assert time.monotonic() - t0 < 2 and lk.notes == []
    finally:
        stranger.kill()
        stranger.wait()


def test_the_run_lock_names_its_holder_by_pid_and_start_time(tmp_path, monkeypatch):
    from vmsnap_native.lock import RunLock
    monkeypatch.setenv("VMSNAP_RUNTIME_DIR", str(tmp_path / "run"))
    with RunLock() as lk:
        line = open(lk.path).read().split()
        assert line[:3] == ["pid=%d" % os.getpid(), "start=%d" % process.starttime(os.getpid()),
                            "role=run"]
    assert open(lk.path).read() == ""   # released: nothing left to wait for


HOLD_AS_RESUME = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
with open("/proc/self/stat") as f:
    start = f.read().rsplit(")", 1)[1].split()[19]
os.pwrite(fd, b"pid=%d start=%s role=resume until=%d\\n"
          % (os.getpid(), start.encode(), time.monotonic_ns() + 300 * 10**6), 0)
print("held", flush=True)
time.sleep(60)
"""


def test_a_resume_that_overruns_its_bound_is_named_not_waited_for_forever(tmp_path,
                                                                          monkeypatch):
    from vmsnap_native import lock as lock_mod
    from vmsnap_native.errors import BusyError
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("VMSNAP_RUNTIME_DIR", str(runtime))
    monkeypatch.setattr(lock_mod, "RESUME_MARGIN_S", 0.5)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AS_RESUME, str(runtime / "lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(BusyError) as exc:
            lock_mod.RunLock().acquire()
        waited = time.monotonic() - t0
        assert 0.5 < waited < 10, waited
        assert "the resume (pid %d) that holds the lock has not finished" % holder.pid \
            in str(exc.value), str(exc.value)
    finally:
        holder.kill()
        holder.wait()


def test_a_child_that_keeps_the_lock_keeps_its_line_when_the_parent_lets_go(tmp_path,
                                                                           monkeypatch):
    from vmsnap_native.lock import RunLock
    monkeypatch.setenv("VMSNAP_RUNTIME_DIR", str(tmp_path / "run"))
    lk = RunLock().acquire()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # a watchdog that keeps the lock
        try:
            lk.adopt()
            os.write(w, b"x")
            time.sleep(2)
        finally:
            os._exit(0)
    os.read(r, 1)
    lk.release()
    try:
        line = open(lk.path).read()
        assert line.startswith("pid=%d " % pid), line
    finally:
        os.waitpid(pid, 0)


def test_the_resume_says_nothing_on_stderr_when_its_post_script_times_out(tmp_path,
                                                                          monkeypatch):
    """Its post-script timed out: the resume exits 1 having logged why, and
    writes nothing on stderr (the reaper would log that as the command's
    error).  Even where its module was imported before the command's code ran
    (here by a sitecustomize), since the command imports it as a module
    instead of having runpy execute it as __main__ beside that copy."""
    from vmsnap_native import _resume
    monkeypatch.setenv("VMSNAP_RUNTIME_DIR", str(tmp_path / "run"))
    config = setup_scripts(tmp_path, post="sleep 30", timeoutInSeconds=1)
    log = tmp_path / "vmsnap.log"
    argv, env = _resume.resume_command(config, log_file=str(log), post=True)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import vmsnap_native._resume\n")
    env["PYTHONPATH"] += os.pathsep + str(site)
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 1 and p.stderr == "", (p.returncode, p.stderr)
    assert "resume: post-script failed: timed out" in log.read_text()
