"""One vmsnap at a time: an flock on /run/vmsnap/lock.

The kernel drops an flock when its holder dies, so a lock left by a killed
run is recovered by the next one without any clean-up.

The lock file says who holds it, one line of ``key=value`` words:
``pid=P start=S role=run|resume`` and, while a run has a resume command
registered with its reaper, ``reaper=PID:START until=NS`` (CLOCK_MONOTONIC
nanoseconds by which that resume is done at the latest); a resume holding
the lock says ``until=`` too.  Each process is named by pid and /proc start
time: a reused pid is someone else.

A run (or any other taker) that finds the lock held by a resume, or left by
a run that died with its resume still to run, waits for that resume (the
post-script that resumes the application after the dead run), up to its
``until`` plus a margin, instead of failing; ``notes`` says so.  Another
run holding the lock is refused at once (BusyError), as before.
"""

from __future__ import annotations

import fcntl
import os
import time

from . import process
from .errors import BusyError
from .freeze import ensure_runtime_dir, runtime_dir

TYPE_CHECKING = False   # true for type checkers; `typing` is not imported for it
if TYPE_CHECKING:
    from typing import Literal

    from .logbook import Logbook

# Past a resume's own bound: its interpreter starting, the log, the scheduler.
RESUME_MARGIN_S = 10.0
_POLL_S = 0.02

# The RunLock this process holds (a second one in the same process would
# only find the first busy): announce_resume() writes into it.
_held: list[RunLock] = []


def held() -> RunLock | None:
    """The RunLock this process holds, or None."""
    return _held[-1] if _held else None


def _parse(text: str) -> dict[str, str]:
    out = {}
    for word in text.split():
        k, sep, v = word.partition("=")
        if sep:
            out[k] = v
    if not out and text.strip().isdigit():   # written by an older vmsnap: the pid alone
        out["pid"] = text.strip()
    return out


def _int(d: dict[str, str], key: str) -> int | None:
    try:
        return int(d[key])
    except (KeyError, ValueError):
        return None


def _reaper(d: dict[str, str]) -> tuple[int, int] | None:
    pid, _, start = d.get("reaper", "").partition(":")
    try:
        return int(pid), int(start)
    except ValueError:
        return None


class RunLock:
    def __init__(self, log: Logbook | None = None, role: str = "run",
                 bound_s: float | None = None) -> None:
        """LOG (a Logbook, or None): where a wait for a resume is said;
        ROLE: "run" for everything that freezes or runs scripts, "resume"
        for the resume command itself, which says in the lock file that it
        is done BOUND_S seconds after it took the lock at the latest."""
        self.path = os.path.join(runtime_dir(), "lock")
        self._fd: int | None = None
        self.log = log
        self.role = role
        self.notes: list[str] = []   # what the caller should report (a wait)
        self._resume = ""             # the announce_resume() words
        self.bound_s = bound_s

    # -- the file's line ------------------------------------------------------
    def _read(self, fd: int) -> dict[str, str]:
        try:
            return _parse(os.pread(fd, 512, 0).decode("ascii", "replace"))
        except OSError:
            return {}

    def _write(self) -> None:
        assert self._fd is not None   # only while the lock is held
        me = os.getpid()
        line = "pid=%d start=%d role=%s%s\n" % (me, process.starttime(me) or 0, self.role,
                                                self._resume)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, line.encode(), 0)

    def _open(self) -> int:
        try:
            ensure_runtime_dir()   # root's alone: the freeze records live there too
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise BusyError("cannot take the lock %s: %s (vmsnap runs as root)"
                            % (self.path, exc.strerror)) from None

    def _note(self, text: str) -> None:
        self.notes.append(text)
        if self.log is not None:
            self.log.warning(text)

    # -- taking and leaving -----------------------------------------------------
    def acquire(self, wait: bool = False, timeout: float | None = None) -> RunLock:
        """Takes the lock; WAIT: blocks until the holder is done instead of
        raising BusyError; TIMEOUT: waits that many seconds at most for a
        holder that is not a resume.  A resume in progress, or one still to
        come from a run that died, is waited for (bounded) either way."""
        waited_for: set[tuple[int | None, int | None]] = set()
        until = None if timeout is None else time.monotonic() + timeout
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                if until is not None and time.monotonic() < until:
                    os.close(fd)
                    time.sleep(_POLL_S)
                    continue
                holder = self._read(fd)
                os.close(fd)
                pid, start = _int(holder, "pid"), _int(holder, "start")
                until = _int(holder, "until")
                if holder.get("role") == "resume" and until and pid is not None and \
                        start is not None and process.alive(pid, start) and \
                        (pid, start) not in waited_for:
                    waited_for.add((pid, start))
                    self._wait_for_resume(pid, start, until, "holds the lock")
                    continue
                raise BusyError("another vmsnap run (pid %s) holds %s; wait for it to finish"
                                % (holder.get("pid", "?"), self.path)) from None
            prev = self._read(fd)
            reaper = _reaper(prev)
            if self.role != "resume" and reaper and reaper not in waited_for and \
                    not process.alive(_int(prev, "pid"), _int(prev, "start")) and \
                    process.alive(*reaper):
                # a run died with a resume registered: its reaper runs it, and
                # it takes this lock to do so; let it go first
                os.close(fd)
                waited_for.add(reaper)
                self._wait_for_resume(*reaper, _int(prev, "until") or 0,
                                      "is about to run for vmsnap (pid %s), which died"
                                      % prev.get("pid", "?"))
                continue
            self._fd = fd
            if self.bound_s:
                self._resume = " until=%d" % (time.monotonic_ns() + int(self.bound_s * 1e9))
            self._write()
            _held.append(self)
            return self

    def _wait_for_resume(self, pid: int, start: int, until_ns: int, what: str) -> None:
        """Waits until the process (PID, START) is gone: a resume (or the
        reaper that starts one), done by UNTIL_NS + the margin at the latest."""
        t0 = time.monotonic()
        bound = max(0.0, (until_ns - time.monotonic_ns()) / 1e9) + RESUME_MARGIN_S
        gone = process.wait_gone(pid, start, bound)
        waited = time.monotonic() - t0
        if not gone:
            raise BusyError("the resume (pid %d) that %s has not finished after %.1f s, past "
                            "its scripts' timeouts: see the log of the vmsnap run it resumes; "
                            "%s stays held meanwhile" % (pid, what, waited, self.path)) from None
        self._note("waited %.1f s for the resume that %s (the post-script resuming the "
                   "application after a vmsnap run that died; at most %.0f s)"
                   % (waited, what, bound))

    def announce_resume(self, reaper: tuple[int, int] | None, until_ns: int = 0) -> None:
        """Says in the lock file that, should this process die, REAPER
        (pid, start time) runs a resume that is done by UNTIL_NS
        (CLOCK_MONOTONIC) at the latest; None: no resume any more.  A
        resume holding the lock gives its own bound (REAPER None)."""
        if self._fd is None:
            return
        if reaper is not None:
            self._resume = " reaper=%d:%d until=%d" % (reaper[0], reaper[1], until_ns)
        else:
            self._resume = " until=%d" % until_ns if until_ns else ""
        self._write()

    def adopt(self) -> None:
        """In a child that inherited the held lock (a watchdog forked to
        keep it): the lock file names this process from now on."""
        if self._fd is not None:
            self._resume = ""
            self._write()
            if self not in _held:
                _held.append(self)

    def release(self) -> None:
        if self._fd is not None:
            if _int(self._read(self._fd), "pid") == os.getpid():
                try:
                    os.ftruncate(self._fd, 0)   # a run that ended: no resume to wait for
                except OSError:
                    pass
            # else a child that inherited the lock holds it on: its line stays
            os.close(self._fd)
            self._fd = None
            if self in _held:
                _held.remove(self)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> Literal[False]:
        self.release()
        return False
