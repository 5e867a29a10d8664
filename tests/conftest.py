"""Fixtures: loop filesystems this test suite makes (and always takes down).

Safety: tests freeze only filesystems created here, always by explicit
mount point.  Teardown thaws, unmounts and detaches even when a test fails.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile

import pytest

from vmsnap_native.devtools import loopfs as loopfs_mod

try:   # `make mutants` runs the tests once per mutant: fewer examples each time
    from hypothesis import settings as _hyp_settings
    # derandomized: the same examples for every mutant, so a kill does not depend on luck
    _hyp_settings.register_profile("mutants", max_examples=25, deadline=None,
                                   derandomize=True, database=None)
    if os.environ.get("VMSNAP_HYPOTHESIS_PROFILE"):
        _hyp_settings.load_profile(os.environ["VMSNAP_HYPOTHESIS_PROFILE"])
except ImportError:
    pass

IS_ROOT = os.geteuid() == 0
HAVE_LOOP = os.path.exists("/dev/loop-control") and shutil.which("losetup") is not None

ROOT_REASON = "needs root and loop devices"
root_only = pytest.mark.skipif(not (IS_ROOT and HAVE_LOOP), reason=ROOT_REASON)
# Under CI=true every skip is a failure (root, loop devices, the database
# servers, qemu-ga, xfsprogs, ansible under `make test-fleet`: CI has them),
# except a skip whose reason is one of these facts of the host, which CI
# cannot install: the kernel's features and what a container allows.  Each
# is named here with the words its skip reason uses.
HOST_FACTS = {
    "no device-mapper": re.compile(r"no device-mapper in this kernel"),
    "no rcu_expedited, or not writable": re.compile(
        r"kernel without rcu_expedited|rcu_expedited is not writable here"),
    "no cgroup v2 (or switched off for a fallback run)": re.compile(r"no cgroup v2 here"),
    "a container that forbids lowering oom_score_adj": re.compile(
        r"does not let root lower oom_score_adj"),
    "no partitions of a loop device shown by the kernel": re.compile(
        r"the kernel shows no partitions of"),
    "no fs.protected_symlinks": re.compile(r"no fs\.protected_symlinks here"),
    "syncfs switched off (the fallback run)": re.compile(r"syncfs switched off"),
    "systemd without its bus (a container)": re.compile(r"systemd-analyze cannot run here"),
    "no Python an unprivileged user can run (the checkout's location)": re.compile(
        r"no Python [0-9.]+ that an unprivileged user can run"),
    # not a host fact, the one opt-in: a checkout of Azure's extension to compare against
    "Azure's extension sources not given (VMSNAP_AZURE_REFERENCE)": re.compile(
        r"set VMSNAP_AZURE_REFERENCE"),
    # not a host fact: `make test` collects tests/fleet, `make test-fleet` runs them
    "the fleet outside `make test-fleet`": re.compile(r"needs ansible-core \(make test-fleet\)"),
}
CI_STRICT = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def host_fact(reason: str):
    """The name of the host fact REASON (a skip's) gives, or None."""
    for name, pattern in HOST_FACTS.items():
        if pattern.search(reason):
            return name
    return None


def _skip_reason(rep) -> str:
    return rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)


def _fail_in_ci(rep):
    """Under CI=true, a skip (of a test or of a whole module) for anything but a host fact fails."""
    if CI_STRICT and rep.skipped and not hasattr(rep, "wasxfail"):
        reason = _skip_reason(rep)
        if host_fact(reason) is None:
            rep.outcome = "failed"
            rep.longrepr = ("skipped in CI (CI=true), and not for a fact of the host "
                            "(tests/conftest.py HOST_FACTS): %s" % reason)


_RUNTIME_DIR = None


def pytest_configure(config):
    # started under nohup or as a shell's background job, the suite inherits SIGHUP
    # or SIGINT ignored, and so would every vmsnap it starts (an ignored signal stays
    # ignored, as nohup intends): the tests that send them would see nothing happen
    if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # keep the suite's crash records apart from a real /run/vmsnap
    global _RUNTIME_DIR
    if "VMSNAP_RUNTIME_DIR" not in os.environ:
        _RUNTIME_DIR = os.environ["VMSNAP_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="vmsnap-test-run-")


def pytest_collection_modifyitems(config, items):
    # under `make mutants` the property tests (hypothesis) go last: most mutants
    # die in a plain test first, in a fraction of the time
    if os.environ.get("VMSNAP_HYPOTHESIS_PROFILE") == "mutants":
        items.sort(key=lambda i: bool(getattr(getattr(i, "obj", None),
                                              "is_hypothesis_test", False)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_in_ci(outcome.get_result())


def pytest_unconfigure(config):
    if _RUNTIME_DIR:
        shutil.rmtree(_RUNTIME_DIR, ignore_errors=True)


def _pending_resumes(runtime: str) -> list:
    """PIDs of this suite's reapers whose controller died (parent not us) and
    of the resume commands they started: the resume takes the run lock."""
    mark = b"VMSNAP_RUNTIME_DIR=" + runtime.encode()
    out = []
    for d in os.listdir("/proc"):
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
            with open("/proc/%s/environ" % d, "rb") as f:
                env = f.read().split(b"\0")
            with open("/proc/%s/cmdline" % d, "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        if mark not in env or fields[0] in "ZX":
            continue
        if b"vmsnap_native._resume" in cmdline or (
                comm == "vmsnap-reaper" and int(fields[1]) != os.getpid()):
            out.append(int(d))
    return out


@pytest.fixture(autouse=True)
def _resumes_done_after_the_test():
    """A run SIGKILLed by a test leaves its resume command to its reaper, and
    the resume takes the run lock while it runs the post-script: the next
    test starts once that is over (at most 30 s), not with
    AnotherRunInProgress."""
    yield
    resumes_done()


def resumes_done(timeout: float = 30.0) -> bool:
    """Waits until no resume command of a run this suite SIGKILLed is pending
    (it holds the run lock while it runs the post-script)."""
    import time
    runtime = os.environ.get("VMSNAP_RUNTIME_DIR")
    end = time.monotonic() + timeout
    while runtime and _pending_resumes(runtime):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


class LoopFilesystems(loopfs_mod.LoopFilesystems):
    """The package's helper; a missing mkfs skips the test."""

    def make(self, n=1, fstype="ext4", size_mb=None, parent=None):
        if shutil.which(loopfs_mod.MKFS[fstype][0]) is None:
            pytest.skip("%s is not installed" % loopfs_mod.MKFS[fstype][0])
        return super().make(n, fstype=fstype, size_mb=size_mb, parent=parent)

    def make_at(self, mountpoint: str) -> str:
        """An ext4 whose image lives in the base directory, mounted at
        MOUNTPOINT (inside another of ours, say: nested by mount point only)."""
        img = os.path.join(self.base, "at%d.img" % len(self.mounts))
        with open(img, "wb") as f:
            f.truncate(loopfs_mod.MIN_SIZE_MB["ext4"] * 1024 * 1024)
        loopfs_mod._run(*loopfs_mod.MKFS["ext4"], img)
        os.makedirs(mountpoint, exist_ok=True)
        loopfs_mod._run("mount", "-o", "loop", img, mountpoint)
        self.mounts.append((mountpoint, img))
        return mountpoint


@pytest.fixture
def loopfs():
    if not (IS_ROOT and HAVE_LOOP):
        pytest.skip("needs root and loop devices")
    base = tempfile.mkdtemp(prefix="vmsnap-loop-")
    fs = LoopFilesystems(base)
    try:
        yield fs
    finally:
        fs.teardown()
        shutil.rmtree(base, ignore_errors=True)


RCU_EXPEDITED = "/sys/kernel/rcu_expedited"


@pytest.fixture
def rcu_off():
    """/sys/kernel/rcu_expedited is 0 when the test starts, arranged rather than
    skipped over.  A 1 there is either another freeze on the machine in its
    waves (it puts 0 back within a second or so: waited for) or the host's own
    setting (rcupdate.rcu_expedited=1): then it is set to 0 for the test and
    put back to 1 after.  Skips (a fact of the host) only where the kernel has
    no such file or does not let us write it (a read-only /sys)."""
    import time
    if not os.path.exists(RCU_EXPEDITED):
        pytest.skip("kernel without rcu_expedited")

    def read() -> str:
        with open(RCU_EXPEDITED) as f:
            return f.read().strip()

    def write(v: str) -> None:
        with open(RCU_EXPEDITED, "w") as f:
            f.write(v)

    try:
        write(read())
    except OSError as exc:
        pytest.skip("rcu_expedited is not writable here: %s" % exc.strerror)
    end = time.monotonic() + 3.0
    while read() != "0" and time.monotonic() < end:
        time.sleep(0.01)
    restore = read()   # still 1 after 3 s: the host's setting, not a freeze's
    if restore != "0":
        write("0")
    assert read() == "0"
    try:
        yield
    finally:
        if restore != "0":
            write(restore)


def frozen_state(mountpoint: str) -> bool:
    """Asks the kernel directly: FIFREEZE on a frozen fs fails with EBUSY.
    (Only for tests' own filesystems; if it was not frozen we thaw it again.)"""
    import fcntl
    FIFREEZE, FITHAW = 0xC0045877, 0xC0045878
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.ioctl(fd, FIFREEZE, 0)
        except OSError as exc:
            import errno
            if exc.errno == errno.EBUSY:
                return True
            raise
        fcntl.ioctl(fd, FITHAW, 0)
        return False
    finally:
        os.close(fd)


def thawed_soon(mounts, timeout: float = 3.0) -> bool:
    """True once none of MOUNTS is frozen (polled: a freeze that was in
    progress when its controller died must return before it is thawed)."""
    import time
    end = time.monotonic() + timeout
    while True:
        if not any(frozen_state(m) for m in mounts):
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.01)


def _proc_table() -> dict:
    """pid -> (ppid, state letter) of every process."""
    table = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(d)] = (int(rest[1]), rest[0])
    return table


def descendants(root: int | None = None) -> dict:
    """pid -> state of every process below ROOT (default: this one)."""
    root = os.getpid() if root is None else root
    table = _proc_table()
    children = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        out[pid] = table[pid][1]
        todo += children.get(pid, ())
    return out


def reap_zombie_children() -> None:
    for pid, state in descendants().items():
        if state == "Z":
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def set_child_subreaper(on: bool) -> None:
    """Orphans of our descendants come to us, not to init: a process a test
    left behind stays findable (PR_SET_CHILD_SUBREAPER)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def live_in_group(pgid: int) -> list:
    """PIDs of live (non-zombie) processes in process group PGID."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[1].split()
        if int(rest[2]) == pgid and rest[0] not in "ZX":
            out.append(int(d))
    return out
