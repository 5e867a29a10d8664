"""Process supervision on the native core (csrc/spawn.c, csrc/contain.c).

``run_process(argv, timeout)`` spawns in a new session and a cgroup v2 of
its own where one can be made (else with this process as child subreaper),
with fds 0-2 only and umask 022; drains output as it comes (bounded: head
and tail), returns at the child's exit even if a background process still
holds the pipe (a detached drainer then keeps reading it), and on timeout
stops the whole tree: SIGTERM + SIGCONT, SIGKILL (cgroup.kill) after the
grace period.  Each child's tree is registered with this process's reaper
(csrc/reaper.c), which kills it if this process dies first.
"""

from __future__ import annotations

import errno as errno_mod
import os
import select
import shutil
import signal
import time
from collections.abc import Iterable, Mapping, Sequence

from . import policy
from ._core import CData, core
from ._record import Record

DEFAULT_GRACE = 2.0
DEFAULT_OUTPUT_LIMIT = 64 * 1024
# A clean, documented environment for everything vmsnap runs (SPEC §3).
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONTAINMENTS = {0: "process-group", 1: "cgroup", 2: "subreaper"}


class ReaperError(OSError):
    """A tree could not be registered with the reaper: had this process died,
    it would have been left running.  The tree has been killed."""


# The reaper: one per controller process, started before the first child
# (csrc/reaper.c).  The fd is our end of the socket whose closing wakes it:
# held for our lifetime.
_reaper: dict[str, int | None] = {"owner": None, "fd": None, "pid": None}
# Children whose trees are still registered (keep_watched): released by
# unwatch_group(pid).  Cgroups that still held processes at their release.
_held: dict[int, Process] = {}
_busy_cgroups: list[str] = []


def _ensure_reaper() -> None:
    """Starts this process's reaper if needed (also in a fork's child)."""
    if _reaper["owner"] == os.getpid():
        return
    ffi, lib = core()
    fdp = ffi.new("int *")
    pid = lib.vmsnap_reaper_start(fdp)
    if pid < 0:
        raise ReaperError(-pid, "cannot start the reaper: %s" % os.strerror(-pid))
    _reaper.update(owner=os.getpid(), fd=fdp[0], pid=pid)
    lib.vmsnap_cgroup_sweep()   # what dead controllers left, now empty


def reaper_pid() -> int | None:
    return _reaper["pid"] if _reaper["owner"] == os.getpid() else None


def reaper_identity() -> tuple[int, int] | None:
    """(pid, /proc start time) of this process's reaper, or None if it has none."""
    pid = reaper_pid()
    st = starttime(pid) if pid else None
    return (pid, st) if pid and st is not None else None


# -- another process, by identity: pid + /proc start time (a reused pid is someone else)

def starttime(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot), None if PID is gone
    or a zombie."""
    try:
        with open("/proc/%d/stat" % int(pid), "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def alive(pid: int | None, start: int | None) -> bool:
    """Whether the process PID that started at START (/proc ticks) still runs."""
    if not pid or pid <= 0 or start is None:
        return False
    return bool(core()[1].vmsnap_process_matches(int(pid), int(start)))


def signal_identity(pid: int, start: int, sig: int) -> bool:
    """Sends SIG to the process (PID, START) through a pidfd taken after its
    identity was checked (so never to a process that reused the pid);
    whether it was sent."""
    try:
        pfd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        pfd = None
    try:
        if not alive(pid, start):
            return False
        if pfd is not None:
            signal.pidfd_send_signal(pfd, sig)
        else:
            os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        if pfd is not None:
            os.close(pfd)


def wait_gone(pid: int, start: int, timeout: float | None) -> bool:
    """Waits until the process (PID, START) is gone, TIMEOUT seconds at most
    (None: no bound); whether it is gone."""
    end = None if timeout is None else time.monotonic() + timeout
    try:
        pfd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        pfd = None
    try:
        while alive(pid, start):
            left = 0.05 if end is None else min(0.05, end - time.monotonic())
            if left <= 0:
                return False
            if pfd is not None:
                select.select([pfd], [], [], left)
            else:
                time.sleep(min(left, 0.005))
        return True
    finally:
        if pfd is not None:
            os.close(pfd)


def _watch(proc: "Process") -> None:
    """Registers (again) PROC's tree with the reaper; ReaperError if full."""
    _ensure_reaper()
    r = core()[1].vmsnap_reaper_watch(proc._p)
    if r < 0:
        raise ReaperError(-r, "cannot register %s (pid %s) with the reaper: %s%s" % (
            proc.argv[0], proc.pid, os.strerror(-r),
            " (its table is full)" if r == -errno_mod.ENOSPC else ""))


def watch_identity(key: int, pid: int, starttime: int, pgid: int = 0) -> None:
    """Registers one process (pid + /proc start time) under KEY: if this
    process dies, the reaper kills it, and its group PGID while it is alive
    in it.  ReaperError when the table is full."""
    _ensure_reaper()
    r = core()[1].vmsnap_reaper_watch_identity(key, pid, starttime, pgid)
    if r < 0:
        raise ReaperError(-r, "cannot register pid %d with the reaper: %s" % (pid, os.strerror(-r)))


def _retry_busy_cgroups() -> None:
    for path in list(_busy_cgroups):
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError:
            continue
        _busy_cgroups.remove(path)


def unwatch_group(pid: int) -> None:
    """Releases the tree of child PID (kept registered with keep_watched):
    what it left running is left alone from now on; its cgroup is removed
    once empty."""
    if _reaper["owner"] == os.getpid():
        core()[1].vmsnap_reaper_unwatch(pid)
    proc = _held.pop(pid, None)
    if proc is not None:
        proc._release()
    _retry_busy_cgroups()


def set_resume_command(argv: Sequence[str] | None, env: Mapping[str, str] | None = None,
                       wait_for: Iterable[tuple[int, int]] = (),
                       log_file: str | None = None) -> None:
    """What the reaper runs if this process dies (a SIGKILL, or any exit
    with it still set): after it killed the registered trees, once every
    (pid, /proc start time) in WAIT_FOR is gone (however long that takes:
    a freeze guardian thaws at its own deadline), ARGV with exactly ENV
    (default: the clean environment scripts get), in its own session, stdin
    and stdout on /dev/null, umask 022, cwd /.  The reaper waits for it and
    appends to LOG_FILE (None: the system log) when it cannot be started or
    fails saying why on stderr, and every minute it waits.  ARGV None clears
    it: do so when the run ends normally.  OSError(E2BIG) when it does not
    fit (VMSNAP_RESUME_MAX bytes, VMSNAP_RESUME_WAIT_MAX pids)."""
    ffi, lib = core()
    _ensure_reaper()
    if argv is None:
        lib.vmsnap_reaper_set_resume(ffi.NULL, ffi.NULL, ffi.NULL, ffi.NULL, 0, ffi.NULL)
        return
    if not argv:
        raise ValueError("argv must not be empty")
    env = clean_environment() if env is None else dict(env)
    exe = _resolve(os.fspath(argv[0]), env)
    if not os.path.isabs(exe):
        raise ValueError("resume command %r: not found" % argv[0])
    keep = [ffi.new("char[]", os.fsencode(a)) for a in [exe] + [os.fspath(a) for a in argv[1:]]]
    envs = [ffi.new("char[]", os.fsencode("%s=%s" % kv)) for kv in env.items()]
    c_argv = ffi.new("char *[]", keep + [ffi.NULL])
    c_env = ffi.new("char *[]", envs + [ffi.NULL])
    wait_for = list(wait_for)
    pids = ffi.new("int32_t[]", [int(p) for p, _ in wait_for] or [0])
    starts = ffi.new("uint64_t[]", [int(s) for _, s in wait_for] or [0])
    c_log = ffi.new("char[]", os.fsencode(os.path.abspath(log_file))) if log_file else ffi.NULL
    r = lib.vmsnap_reaper_set_resume(c_argv, c_env, pids, starts, len(wait_for), c_log)
    if r < 0:
        raise OSError(-r, "resume command not set: %s (at most %d bytes of arguments and "
                      "environment, %d processes to wait for, a log path of %d bytes)"
                      % (os.strerror(-r), lib.VMSNAP_RESUME_MAX, lib.VMSNAP_RESUME_WAIT_MAX,
                         lib.VMSNAP_PATH_MAX - 1))


def resume_job_begin(args_mask: int) -> None:
    """The resume command's job whose arguments are the bits of ARGS_MASK
    (their indices in its argv) runs now: every process spawned until
    ``resume_job_done`` marks itself as its attempt (0: no job; forgets the
    mark).  At our death the reaper drops the arguments of an attempt that
    had ended (its job has run) and kills one still running (its job runs
    again)."""
    if _reaper["owner"] == os.getpid():
        core()[1].vmsnap_reaper_resume_job_begin(int(args_mask))


def resume_job_done(args_mask: int) -> None:
    """The job of ARGS_MASK has run: the resume command leaves it out."""
    if _reaper["owner"] == os.getpid():
        core()[1].vmsnap_reaper_resume_job_done(int(args_mask))


def clean_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of scripts and hooks: PATH has only the standard
    directories that pass the permission policy (what `#!/usr/bin/env X`
    finds there is what the policy checked)."""
    env = {"PATH": policy.trusted_search_path(), "LANG": "C.UTF-8", "HOME": "/root", "SHELL": "/bin/sh",
           "USER": "root", "LOGNAME": "root"}
    if extra:
        env.update(extra)
    return env


class ProcessResult(Record):
    __slots__ = ("argv", "exit_code", "signal", "timed_out", "duration_ms", "output",
                 "output_truncated", "output_bytes", "spawn_error", "used_fallback", "survivors",
                 "pid", "containment", "cgroup")
    argv: list[str]
    exit_code: int | None        # None when killed by a signal
    signal: int | None           # the signal that killed it
    timed_out: bool
    duration_ms: float
    output: str
    output_truncated: bool
    output_bytes: int
    spawn_error: str | None      # exec failed: "not found", "permission denied", ...
    used_fallback: bool          # supervised without a pidfd
    survivors: int               # tree members that could not be killed (D state)
    pid: int | None              # the child's pid, which is also its process group
    containment: str             # how its tree was held: cgroup | subreaper | process-group
    cgroup: str | None           # its cgroup's path, with containment "cgroup"

    def __init__(self, argv: list[str], exit_code: int | None, signal: int | None,
                 timed_out: bool, duration_ms: float, output: str,
                 output_truncated: bool = False, output_bytes: int = 0,
                 spawn_error: str | None = None, used_fallback: bool = False,
                 survivors: int = 0, pid: int | None = None,
                 containment: str = "process-group", cgroup: str | None = None) -> None:
        self.argv = argv
        self.exit_code = exit_code
        self.signal = signal
        self.timed_out = timed_out
        self.duration_ms = duration_ms
        self.output = output
        self.output_truncated = output_truncated
        self.output_bytes = output_bytes
        self.spawn_error = spawn_error
        self.used_fallback = used_fallback
        self.survivors = survivors
        self.pid = pid
        self.containment = containment
        self.cgroup = cgroup

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.spawn_error

    def describe(self) -> str:
        if self.spawn_error:
            return "could not be executed: %s" % self.spawn_error
        if self.timed_out:
            return "timed out after %.0f ms and was stopped" % self.duration_ms
        if self.signal:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = str(self.signal)
            return "killed by %s" % name
        return "exited with status %s" % self.exit_code


def _resolve(argv0: str, env: Mapping[str, str]) -> str:
    if "/" in argv0:
        return argv0
    found = shutil.which(argv0, path=env.get("PATH", CLEAN_PATH))
    return found or argv0


def _output(ffi: CData, p: CData) -> tuple[str, bool]:
    head = ffi.buffer(p.head, p.head_len)[:] if p.head_len else b""
    tail = b""
    if p.tail_len:
        ring = ffi.buffer(p.tail, p.tail_cap)[:]
        if p.tail_len < p.tail_cap:
            tail = ring[:p.tail_len]
        else:
            tail = ring[p.tail_pos:] + ring[:p.tail_pos]
    truncated = p.output_total > len(head) + len(tail)
    if truncated:
        skipped = p.output_total - len(head) - len(tail)
        data = head + b"\n[... %d bytes not kept ...]\n" % skipped + tail
    else:
        data = head + tail
    return data.decode("utf-8", "replace"), truncated


class Process:
    """A supervised child.  ``wait()`` returns its ProcessResult.

    From the instant the child exists until ``wait()`` returns, an exception
    (a stop signal's Interrupted, KeyboardInterrupt, SystemExit) kills its
    whole tree and waits for it: inside the constructor here, inside
    ``wait()`` there.  Between the two, the caller's: ``run_process`` closes
    it (use it, or call ``abandon()`` when anything is raised before the
    wait)."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None,
                 cwd: str | None = None, output_limit: int = DEFAULT_OUTPUT_LIMIT,
                 executable: str | None = None, force_fallback: bool = False,
                 _spawned: "list[Process] | None" = None) -> None:
        ffi, lib = core()
        if not argv:
            raise ValueError("argv must not be empty")
        self.argv = [os.fspath(a) for a in argv]
        env = clean_environment() if env is None else dict(env)
        path = executable or _resolve(self.argv[0], env)
        self._keep: list[CData] = []   # keeps the C strings alive while the child exists

        def cstr(s: str) -> CData:
            b = ffi.new("char[]", os.fsencode(s))
            self._keep.append(b)
            return b

        c_argv = ffi.new("char *[]", [cstr(a) for a in self.argv] + [ffi.NULL])
        c_env = ffi.new("char *[]", [cstr("%s=%s" % kv) for kv in env.items()] + [ffi.NULL])
        self._keep += [c_argv, c_env]
        half = max(1, int(output_limit) // 2)
        self._head = ffi.new("char[]", half)
        self._tail = ffi.new("char[]", half)
        p = ffi.new("struct vmsnap_proc *")
        p.head, p.head_cap, p.tail, p.tail_cap = self._head, half, self._tail, half
        # the per-call switch; VMSNAP_COMPAT_DISABLE=pidfd switches it off for all
        flags = lib.VMSNAP_SPAWN_NO_PIDFD if force_fallback else 0
        c_path = cstr(path)
        c_cwd = cstr(os.fspath(cwd)) if cwd else ffi.NULL
        _ensure_reaper()    # before the child: the reaper is no orphan of its tree
        _retry_busy_cgroups()
        # everything abandon() needs is in place before the child exists: an
        # exception at any instant from the spawn on kills it (p.pid > 0 says
        # it was started; the C call itself is never interrupted)
        self._p = p
        self.pid: int | None = None
        self.containment: str = "none"
        self.cgroup: str | None = None
        self.result: ProcessResult | None = None
        self._released = False
        self._abandoned = False
        if _spawned is not None:
            _spawned.append(self)
        try:
            r = lib.vmsnap_proc_spawn(c_path, c_argv, c_env, c_cwd, flags, p)
            if r < 0:
                raise OSError(-r, "cannot supervise %s: %s" % (path, os.strerror(-r)))
            self.pid = p.pid if p.pid > 0 else None
            if self.pid:
                self.containment = CONTAINMENTS.get(p.containment, "process-group")
                self.cgroup = ffi.string(p.cgroup).decode() or None
                _watch(self)    # killed with its tree if we die before it ends
        except BaseException:
            self.abandon()
            raise

    def abandon(self) -> None:
        """Kills the whole tree (if the child was started and not yet waited
        for) and reaps it; idempotent, and a no-op once ``wait()`` has
        returned."""
        if self._abandoned or self.result is not None:
            return
        self._abandoned = True
        if self._p.pid <= 0:
            return
        self.pid = self._p.pid
        if not self._p.reaped or not self._released:
            self._stop()
        unwatch_group(self.pid)

    def _stop(self) -> None:
        """Kills the whole tree and waits until it is gone."""
        lib = core()[1]
        lib.vmsnap_proc_kill_tree(self._p)
        # a deadline long past: the kill path; EINTR (a signal) only retries
        while lib.vmsnap_proc_wait(self._p, 1, 0) == -errno_mod.EINTR:
            pass
        lib.vmsnap_proc_close(self._p)
        self._release()

    def _release(self) -> None:
        if self._released or not self.pid:
            return
        self._released = True
        r = core()[1].vmsnap_proc_release(self._p)
        if r == -errno_mod.EBUSY:
            _busy_cgroups.append(core()[0].string(self._p.cgroup).decode())

    def wait(self, timeout: float | None = None, grace: float = DEFAULT_GRACE,
             deadline_ns: int | None = None, keep_watched: bool = False) -> ProcessResult:
        """Waits for the exit; TIMEOUT (seconds) or an absolute monotonic
        DEADLINE_NS stops the whole tree.  Ctrl-C stops the tree too.
        keep_watched: leave the tree registered with the reaper (processes it
        left behind die with this process; ``unwatch_group(pid)`` releases)."""
        if self.result is not None:
            return self.result
        ffi, lib = core()
        p = self._p
        if deadline_ns is None:
            deadline_ns = p.start_ns + int(timeout * 1e9) if timeout else 0
        grace_ns = int(grace * 1e9)
        try:
            while True:
                r = lib.vmsnap_proc_wait(p, deadline_ns, grace_ns)
                if r != -errno_mod.EINTR:
                    break
        except BaseException:
            # interrupted (KeyboardInterrupt, SystemExit): leave nothing running
            self._stop()
            if self.pid:
                unwatch_group(self.pid)
            raise
        lib.vmsnap_proc_close(p)    # a pipe still held goes to a drainer
        if self.pid:
            if keep_watched and not p.timed_out:
                try:
                    _watch(self)    # again: without a cgroup, what it left running
                except ReaperError:
                    self._stop()
                    unwatch_group(self.pid)
                    raise
                _held[self.pid] = self
            else:
                unwatch_group(self.pid)
                self._release()
        if r < 0:
            raise OSError(-r, "supervising %s failed: %s" % (self.argv[0], os.strerror(-r)))
        output, truncated = _output(ffi, p)
        spawn_error = None
        if p.spawn_errno:
            spawn_error = "%s: %s" % (os.strerror(p.spawn_errno), self.argv[0])
        end = p.done_ns or p.end_ns or time.monotonic_ns()
        self.result = ProcessResult(
            argv=self.argv,
            exit_code=None if p.term_signal else p.exit_code,
            signal=p.term_signal or None,
            timed_out=bool(p.timed_out),
            duration_ms=round((end - p.start_ns) / 1e6, 3),
            output=output,
            output_truncated=truncated,
            output_bytes=int(p.output_total),
            spawn_error=spawn_error,
            used_fallback=bool(p.used_fallback),
            survivors=int(p.group_alive),
            pid=self.pid,
            containment=self.containment,
            cgroup=self.cgroup,
        )
        return self.result


def run_process(argv: Sequence[str], timeout: float | None = None,
                grace: float = DEFAULT_GRACE, env: Mapping[str, str] | None = None,
                cwd: str | None = None, output_limit: int = DEFAULT_OUTPUT_LIMIT, deadline_ns: int | None = None,
                executable: str | None = None, force_fallback: bool = False,
                keep_watched: bool = False) -> ProcessResult:
    """Runs ARGV under supervision and returns a ProcessResult.

    env: the complete environment (default: a clean one, see
    ``clean_environment``); output_limit: bytes of output kept (half head,
    half tail); grace: seconds between SIGTERM and SIGKILL on timeout.
    A program that cannot be executed gives exit code 127 (not found) or
    126 (not executable) and ``spawn_error``, not an exception.
    """
    # the Process is known here before its child exists: an exception that
    # lands between the constructor's return and the wait's own guard (a
    # stop signal on a loaded machine) still kills and reaps its tree
    spawned: list[Process] = []
    try:
        Process(argv, env=env, cwd=cwd, output_limit=output_limit, executable=executable,
                force_fallback=force_fallback, _spawned=spawned)
        return spawned[0].wait(timeout=timeout, grace=grace, deadline_ns=deadline_ns,
                               keep_watched=keep_watched)
    except BaseException:
        for proc in spawned:
            proc.abandon()
        raise
