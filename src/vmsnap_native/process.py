"""Process supervision on the native core (csrc/spawn.c).

``run_process(argv, timeout)`` spawns in a new session, drains output as it
comes (bounded: head and tail), returns at the child's exit even if a
background process still holds the pipe, and on timeout stops the whole
process group: SIGTERM + SIGCONT, SIGKILL after the grace period.
"""

from __future__ import annotations

import errno as errno_mod
import os
import shutil
import signal
import time
from dataclasses import dataclass

from ._core import core

DEFAULT_GRACE = 2.0
DEFAULT_OUTPUT_LIMIT = 64 * 1024
# A clean, documented environment for everything vmsnap runs (SPEC §3).
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NO_PIDFD_ENV = "VMSNAP_FORCE_NO_PIDFD"


# The reaper: one per controller process, started on first use (csrc/reaper.c).
# The fd is our end of the socket whose closing wakes it: held for our lifetime.
_reaper = {"owner": None, "fd": None}


def _reaper_started() -> bool:
    """Starts this process's reaper if needed; False if it cannot be started
    (supervision still works, without that net)."""
    if _reaper["owner"] != os.getpid():   # first use, or we are a fork's child
        ffi, lib = core()
        fdp = ffi.new("int *")
        started = lib.vmsnap_reaper_start(fdp) > 0
        _reaper.update(owner=os.getpid(), fd=fdp[0] if started else None)
    return _reaper["fd"] is not None


def watch_group(pgid: int) -> None:
    """If this process dies, the reaper SIGKILLs process group PGID."""
    if _reaper_started():
        core()[1].vmsnap_reaper_watch(pgid)


def unwatch_group(pgid: int) -> None:
    if _reaper["owner"] == os.getpid() and _reaper["fd"] is not None:
        core()[1].vmsnap_reaper_unwatch(pgid)


def clean_environment(extra: dict | None = None) -> dict:
    env = {"PATH": CLEAN_PATH, "LANG": "C.UTF-8", "HOME": "/root", "SHELL": "/bin/sh",
           "USER": "root", "LOGNAME": "root"}
    if extra:
        env.update(extra)
    return env


@dataclass
class ProcessResult:
    argv: list
    exit_code: int | None        # None when killed by a signal
    signal: int | None           # the signal that killed it
    timed_out: bool
    duration_ms: float
    output: str
    output_truncated: bool = False
    output_bytes: int = 0
    spawn_error: str | None = None   # exec failed: "not found", "permission denied", ...
    used_fallback: bool = False      # supervised without a pidfd
    survivors: int = 0               # group members that could not be killed (D state)
    pid: int | None = None           # the child's pid, which is also its process group

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


def _resolve(argv0: str, env: dict) -> str:
    if "/" in argv0:
        return argv0
    found = shutil.which(argv0, path=env.get("PATH", CLEAN_PATH))
    return found or argv0


def _output(ffi, p) -> tuple:
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
    """A supervised child.  ``wait()`` returns its ProcessResult."""

    def __init__(self, argv, env=None, cwd=None, output_limit=DEFAULT_OUTPUT_LIMIT,
                 executable=None, force_fallback=None):
        ffi, lib = core()
        if not argv:
            raise ValueError("argv must not be empty")
        self.argv = [os.fspath(a) for a in argv]
        env = clean_environment() if env is None else dict(env)
        path = executable or _resolve(self.argv[0], env)
        self._keep = []   # keeps the C strings alive while the child exists

        def cstr(s):
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
        if force_fallback is None:
            force_fallback = bool(os.environ.get(NO_PIDFD_ENV))
        flags = lib.VMSNAP_SPAWN_NO_PIDFD if force_fallback else 0
        r = lib.vmsnap_proc_spawn(cstr(path), c_argv, c_env,
                                  cstr(os.fspath(cwd)) if cwd else ffi.NULL, flags, p)
        if r < 0:
            raise OSError(-r, "cannot supervise %s: %s" % (path, os.strerror(-r)))
        self._p = p
        self.pid = p.pid if p.pid > 0 else None
        self.result = None
        if self.pid:
            watch_group(self.pid)   # killed with the group if we die before it ends

    def wait(self, timeout: float | None = None, grace: float = DEFAULT_GRACE,
             deadline_ns: int | None = None, keep_watched: bool = False) -> ProcessResult:
        """Waits for the exit; TIMEOUT (seconds) or an absolute monotonic
        DEADLINE_NS stops the whole group.  Ctrl-C stops the group too.
        keep_watched: leave the group registered with the reaper (processes it
        left behind die with this process; call ``unwatch_group`` to release)."""
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
            lib.vmsnap_proc_signal_group(p, signal.SIGKILL)
            lib.vmsnap_proc_wait(p, 0, 0)
            lib.vmsnap_proc_close(p)
            raise
        lib.vmsnap_proc_close(p)
        if self.pid and not keep_watched:
            unwatch_group(self.pid)
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
        )
        return self.result


def run_process(argv, timeout: float | None = None, grace: float = DEFAULT_GRACE, env=None,
                cwd=None, output_limit: int = DEFAULT_OUTPUT_LIMIT, deadline_ns: int | None = None,
                executable: str | None = None, force_fallback: bool | None = None,
                keep_watched: bool = False) -> ProcessResult:
    """Runs ARGV under supervision and returns a ProcessResult.

    env: the complete environment (default: a clean one, see
    ``clean_environment``); output_limit: bytes of output kept (half head,
    half tail); grace: seconds between SIGTERM and SIGKILL on timeout.
    A program that cannot be executed gives exit code 127 (not found) or
    126 (not executable) and ``spawn_error``, not an exception.
    """
    return Process(argv, env=env, cwd=cwd, output_limit=output_limit, executable=executable,
                   force_fallback=force_fallback).wait(timeout=timeout, grace=grace,
                                                       deadline_ns=deadline_ns,
                                                       keep_watched=keep_watched)
