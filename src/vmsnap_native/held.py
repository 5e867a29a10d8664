"""`vmsnap freeze`: freeze the configured filesystems and leave them frozen,
held by their guardian until `vmsnap thaw` or the deadline, for a snapshot
taken by something else.  All or nothing: if one filesystem does not
freeze, every one is thawed.

Each held freeze (a lease) has a session id, ``PID-START-BOOT``: its
guardian's pid and /proc start time, and the boot it belongs to, which
name that one process and no other, ever.  ``thaw_session(id)`` ends that
freeze and no other, and says whether the lease still held when it came
(``thawed``) or had already ended (``expired``: its deadline, another
thaw, a reboot); `vmsnap thaw --session ID` is that call.  Plain
``thaw_recorded()`` (`vmsnap thaw`) still thaws whatever is recorded.

Whoever dies, the freeze ends by its deadline: the guardian thaws at the
deadline, and when `vmsnap freeze` dies before handing the freeze over.
Should the guardian itself die (a SIGKILL), the lease's watcher thaws
from its record at once: `vmsnap freeze` leaves its reaper the command
``python -m vmsnap_native.held --watch-lease RECORD --guardian PID:START``
(the reaper's resume, as a run leaves its post-script), which the reaper
starts when `vmsnap freeze` exits or dies; it waits for the guardian to be
gone and, if the guardian left its record (it removes it after every
thaw of its own), thaws from it under the run lock with the core's thaw
from saved state, and logs that to the system log.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import sys
import syslog
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from . import process
from ._core import CData, core
from ._resume import _python, package_root  # the resume's interpreter and package
from .cycle import recover_stale
from .errors import BusyError, CoreUnavailable, FreezeError
from .freeze import (
    RUNTIME_DIR_ENV,
    FreezeSession,
    IncompleteRecord,
    RecordedThaw,
    _check_runtime_dir,
    _read_record,
    _records,
    _thaw_one_record,
    runtime_dir,
    thaw_reason_name,
)
from .lock import RunLock
from .logbook import Logbook
from .mountinfo import Candidate
from .plan import make_plan


@dataclass
class HeldFreeze:
    """What a held freeze did (the JSON of `vmsnap freeze --json`)."""

    status: str = "failed"             # "frozen": left frozen under the guardian
    session: str | None = None         # the lease's id, for thaw_session()
    guardian_pid: int | None = None
    timeout: float = 0.0               # seconds after which the guardian thaws anyway
    record: str | None = None          # the record `vmsnap thaw` reads
    mounts: list[dict[str, Any]] = field(default_factory=list)   # MountResult.to_dict()s
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)   # a wait for a resume, say

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "session": self.session, "warnings": self.warnings,
                "guardian_pid": self.guardian_pid,
                "timeout": self.timeout, "record": self.record, "mounts": self.mounts,
                "errors": self.errors}


def output_on(cands: Iterable[Candidate],
              streams: Sequence[tuple[str, IO[str]]] | None = None) -> str | None:
    """A stream of ours that is a file on one of these filesystems: printing
    to it while they are frozen would block until the thaw."""
    devs = {}
    for c in cands:
        try:
            devs[os.stat(c.mount.mountpoint).st_dev] = c.mount.mountpoint
        except OSError:
            pass
    for name, stream in streams or (("stdout", sys.stdout), ("stderr", sys.stderr)):
        try:
            st = os.fstat(stream.fileno())
        except (OSError, ValueError):
            continue
        if stat.S_ISREG(st.st_mode) and st.st_dev in devs:
            return "%s is a file on %s, which would be frozen: redirect it elsewhere" % (
                name, devs[st.st_dev])
    return None


def freeze_and_hold(config: str | None, mounts: Sequence[str] | None,
                    timeout: float) -> HeldFreeze:
    """Freezes CONFIG's filesystems (or MOUNTS) under the run lock and leaves
    them frozen with the guardian, which thaws them after TIMEOUT seconds at
    the latest.  The result's ``session`` is the lease's id for
    ``thaw_session()``.  Never raises for what the report can say."""
    held = HeldFreeze(timeout=timeout)
    watching = False
    lock = RunLock()   # it waits for the resume of a run that died, and says so
    try:
        with lock:
            recover_stale(Logbook(None))
            plan = make_plan(config, mounts=mounts or None)
            if plan.selection.missing:
                raise FreezeError("not a mount point: %s" % ", ".join(plan.selection.missing))
            if not plan.selection.eligible:
                raise FreezeError("no filesystem to freeze")
            problem = output_on(plan.selection.eligible)
            if problem:
                raise FreezeError(problem)
            s = FreezeSession(plan.selection.eligible, timeout=timeout,
                              expedite_rcu=plan.settings.expedite_rcu,
                              dirty_cap_mb=plan.settings.dirty_cap_mib)
            process.set_resume_command(None)   # the reaper ready before the guardian starts
            s.start()
            # before anything is frozen: should the guardian die, its record
            # is thawed from once this process is gone too
            assert s.guardian_pid is not None and s.guardian_starttime is not None
            watch_lease_after_exit(s.record_path, s.guardian_pid, s.guardian_starttime)
            watching = True
            s.freeze()
            held.mounts = [m.to_dict() for m in s.mounts]
            if not s.all_frozen:
                deadline = s.thawed_early() == "deadline" or s.deadline_hit
                s.thaw()
                held.mounts = [m.to_dict() for m in s.mounts]
                held.errors = ["%s: %s" % (m.mountpoint, m.error) for m in s.failures]
                if deadline or s.deadline_hit:
                    held.errors.insert(0, "the freeze timeout (%g s) passed before every "
                                          "filesystem was frozen: give a longer --timeout"
                                       % timeout)
            else:
                held.status, held.guardian_pid, held.record = "frozen", s.guardian_pid, \
                    s.record_path
                assert s.guardian_pid is not None and s.guardian_starttime is not None   # started
                held.session = session_id(s.guardian_pid, s.guardian_starttime)
                s.detach()
    except (BusyError, FreezeError, CoreUnavailable) as exc:
        held.errors.append(str(exc))
    except ValueError as exc:   # a timeout out of range
        held.errors.append(str(exc))
    except OSError as exc:
        held.errors.append("%s: %s" % (exc.filename, exc.strerror) if exc.filename
                           else str(exc))
    finally:
        held.warnings = list(lock.notes)
        if watching and held.status != "frozen":
            process.set_resume_command(None)   # nothing left frozen to watch
    return held


# -- leases: a held freeze by its id ---------------------------------------------

# How long a guardian asked to thaw gets to finish (a FITHAW does not block).
THAW_WAIT_S = 10.0
THAWED, EXPIRED, UNKNOWN, FAILED = "thawed", "expired", "unknown", "failed"
_SESSION = re.compile(r"^(\d+)-(\d+)-([0-9a-f]{8})$")


def _boot() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip().replace("-", "")[:8]


def session_id(guardian_pid: int, guardian_starttime: int) -> str:
    """The id of the freeze held by that guardian (pid + /proc start time),
    in this boot: ``PID-START-BOOT``."""
    return "%d-%d-%s" % (guardian_pid, guardian_starttime, _boot())


@dataclass
class SessionThaw:
    """What thaw_session() did (the JSON of `vmsnap thaw --session ID --json`)."""

    session: str
    status: str = UNKNOWN     # thawed | expired | unknown | failed
    message: str = ""
    filesystems: list[RecordedThaw] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The lease still held, and this call ended it."""
        return self.status == THAWED

    def to_dict(self) -> dict[str, Any]:
        return {"session": self.session, "status": self.status, "message": self.message,
                "filesystems": [{"mountpoint": r.mountpoint, "outcome": r.outcome}
                                for r in self.filesystems if r.mountpoint is not None]}


def _find_record(pid: int, start: int) -> tuple[str, int] | None:
    """(path, fd) of the record whose guardian is (PID, START), the file
    held open (the guardian writes its last word into it before it unlinks
    it), or None."""
    for path in _records():
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            _, sh = _read_record(path, fd)
        except (OSError, ValueError):
            os.close(fd)
            continue
        if sh.guardian_pid == pid and sh.guardian_starttime == start:
            return path, fd
        os.close(fd)
    return None


def _final_word(path: str, fd: int) -> tuple[CData, CData] | None:
    """The record open as FD as its guardian left it (buffer, struct), or None."""
    try:
        return _read_record(path, fd)
    except (OSError, ValueError):
        return None


def _ended_by(sh: CData) -> str:
    reason = thaw_reason_name(sh.thaw_reason)
    return {"deadline": "its deadline passed", "vmsnap-thaw": "another `vmsnap thaw` ended it",
            "signal": "a signal to its guardian ended it",
            "controller-died": "it was never handed over"}.get(reason or "", "it was ended (%s)"
                                                                % reason)


def thaw_session(session: str, timeout: float = THAW_WAIT_S) -> SessionThaw:
    """Ends the held freeze SESSION (an id from freeze_and_hold) and nothing
    else.  ``thawed``: it still held and is thawed now; ``expired``: it had
    already ended (deadline, another thaw, a reboot): nothing is done;
    ``unknown``: no held freeze has that id; ``failed``: it held, but a
    filesystem could not be thawed (the message says which; the record is
    kept for `vmsnap thaw`).  Never raises for what the result can say."""
    out = SessionThaw(session=str(session))
    m = _SESSION.match(str(session).strip())
    if m is None:
        out.message = "not a session id (PID-START-BOOT, as `vmsnap freeze` prints it)"
        return out
    pid, start, boot = int(m.group(1)), int(m.group(2)), m.group(3)
    try:
        core()
        if boot != _boot():
            out.status = EXPIRED
            out.message = "the machine has restarted since: that freeze ended with it"
            return out
        problem = _check_runtime_dir(runtime_dir())
        if problem:
            out.status, out.message = FAILED, "untrusted runtime directory: %s" % problem
            return out
        found = _find_record(pid, start)
    except (CoreUnavailable, OSError) as exc:
        out.status, out.message = FAILED, str(exc)
        return out
    if found is None:
        if process.alive(pid, start):
            out.message = "process %d is not the guardian of a held freeze" % pid
            return out
        out.status = EXPIRED
        out.message = "that freeze no longer holds (its deadline passed, another thaw " \
                      "ended it, or its guardian died and it was thawed from its record): " \
                      "the snapshot it was for is not consistent"
        return out
    path, fd = found
    try:
        # the run lock, as for anything that thaws: a lease is held without
        # it, and nothing else takes it for long meanwhile (a run or a
        # freeze that starts finds the lease and gives up)
        lock = RunLock().acquire(timeout=timeout)
    except BusyError as exc:
        os.close(fd)
        out.status, out.message = FAILED, str(exc)
        return out
    try:
        return _end_lease(out, path, fd, pid, start, timeout)
    finally:
        lock.release()
        os.close(fd)


def _end_lease(out: SessionThaw, path: str, fd: int, pid: int, start: int,
               timeout: float) -> SessionThaw:
    got = _final_word(path, fd)
    if got is None:
        out.status, out.message = FAILED, "%s: not a readable freeze record" % path
        return out
    buf, sh = got
    if not sh.detached and process.alive(sh.controller_pid, sh.controller_starttime):
        out.message = "a vmsnap run in progress holds that freeze, not a lease"
        return out
    if process.alive(pid, start):
        began = sh.thaw_reason or sh.guardian_done or \
            (sh.record_live and time.monotonic_ns() >= sh.deadline_ns)
        asked_ns = time.monotonic_ns()
        if not began:
            process.signal_identity(pid, start, signal.SIGUSR2)   # the guardian records who asked
        if not process.wait_gone(pid, start, timeout):
            out.status = FAILED
            out.message = "its guardian (pid %d) was asked to thaw but has not finished in " \
                          "%g s (a thaw stuck in the kernel?)" % (pid, timeout)
            return out
        final = _final_word(path, fd)
        if final is not None:
            buf, sh = final
        if os.fstat(fd).st_nlink == 0:   # the guardian thawed everything and removed it
            names = [os.fsdecode(core()[0].string(sh.fs[i].path)) for i in range(sh.n)]
            ours = not began and (thaw_reason_name(sh.thaw_reason) == "vmsnap-thaw"
                                  if sh.record_live else
                                  asked_ns < sh.deadline_ns - sh.presync_timeout_ns)
            out.filesystems = [RecordedThaw(mp, "thawed by its guardian", path) for mp in names]
            if ours:
                out.status, out.message = THAWED, "thawed: the freeze held until now"
            else:
                out.status = EXPIRED
                out.message = ("%s before this thaw: the snapshot it was for is not "
                               "consistent" % _ended_by(sh)) if sh.record_live else \
                    "the freeze may have reached its deadline before this thaw"
            return out
    if os.fstat(fd).st_nlink == 0:
        # gone before we had the lock: the lease's watcher (or another thaw)
        # thawed it from the record; what is frozen now is someone else's
        out.status = EXPIRED
        out.message = "its guardian died and the freeze was thawed from its record before " \
                      "this thaw: the snapshot it was for is not consistent"
        return out
    # the guardian is gone and left the record: what it froze may still be
    # frozen; thawed from the record (the core's thaw from saved state),
    # under the run lock (taken above) so that no run's freeze is touched
    try:
        results = _thaw_one_record(path, sh, buf, False, timeout)
    except (OSError, ValueError) as exc:
        out.status, out.message = FAILED, str(exc)
        return out
    out.filesystems = [RecordedThaw(r.mountpoint, r.outcome, path) for r in results]
    failed = [r for r in results if r.outcome.startswith("failed")]
    if failed:
        out.status = FAILED
        out.message = "; ".join("%s: %s" % (r.mountpoint, r.outcome) for r in failed)
    elif any(r.outcome == "thawed" for r in results):
        out.status, out.message = THAWED, "thawed from its record (its guardian was gone)"
    else:
        out.status = EXPIRED
        out.message = "nothing of it was still frozen: " + "; ".join(
            "%s: %s" % (r.mountpoint, r.outcome) for r in results)
    return out


# -- the lease's watcher: its guardian's death thaws it at once ------------------

WATCH_MODULE = "vmsnap_native.held"
# How long the watcher tries for the run lock before it says it gave up
# (whoever holds it then thawed the dead lease's record on taking it).
WATCH_LOCK_S = 120.0


def watch_lease_after_exit(record: str | None, guardian_pid: int, guardian_start: int) -> None:
    """Leaves this process's reaper the lease's watcher, started when this
    process is gone (exit or SIGKILL): it waits for the guardian
    (GUARDIAN_PID, GUARDIAN_START) and thaws from RECORD what it left
    frozen.  Nothing to do without a record (nothing to thaw from)."""
    if not record:
        return
    argv = [_python(), "-m", WATCH_MODULE, "--watch-lease", record,
            "--guardian", "%d:%d" % (guardian_pid, guardian_start)]
    env = process.clean_environment({"PYTHONPATH": package_root(), "PYTHONSAFEPATH": "1",
                                     "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1",
                                     RUNTIME_DIR_ENV: runtime_dir()})
    process.set_resume_command(argv, env)


def _say(level: int, msg: str) -> None:
    syslog.openlog("vmsnap-lease", syslog.LOG_PID, syslog.LOG_DAEMON)
    syslog.syslog(level, msg)
    print("vmsnap lease watcher: %s" % msg, file=sys.stderr, flush=True)


def watch_lease(record: str, pid: int, start: int, lock_wait: float = WATCH_LOCK_S) -> int:
    """The watcher (run by the reaper): once the guardian (PID, START) is
    gone, thaws what it left frozen, from RECORD, under the run lock.  The
    guardian removes its record after every thaw of its own (deadline,
    `vmsnap thaw`, the death of `vmsnap freeze` before the handover); a
    record still there means it died holding the freeze.  0: nothing was
    left frozen or all of it is thawed now; 1: a thaw failed (said why)."""
    while not process.wait_gone(pid, start, 3600.0):
        pass   # a lease may be long; a guardian stuck in the kernel longer still
    if not os.path.lexists(record):
        return 0
    lock = RunLock(role="resume", bound_s=THAW_WAIT_S)
    give_up = time.monotonic() + lock_wait
    while True:
        try:
            lock.acquire(timeout=1.0)
            break
        except BusyError as exc:
            if not os.path.lexists(record):
                return 0   # whoever holds the lock thawed it on taking it
            if time.monotonic() > give_up:
                _say(syslog.LOG_ERR, "the guardian (pid %d) of a held freeze died; its record "
                     "%s is left for `vmsnap thaw`: %s" % (pid, record, exc))
                return 1
    try:
        try:
            buf, sh = _read_record(record)
        except FileNotFoundError:
            return 0   # thawed (and removed) by another thaw before we had the lock
        except IncompleteRecord:
            return 0   # never written: nothing was frozen under it
        except (OSError, ValueError) as exc:
            _say(syslog.LOG_ERR, "%s: %s" % (record, exc))
            return 1
        if (sh.guardian_pid, sh.guardian_starttime) != (pid, start):
            return 0   # not that guardian's
        results = _thaw_one_record(record, sh, buf, False, THAW_WAIT_S)
        failed = [r for r in results if r.outcome.startswith("failed")]
        thawed = [str(r.mountpoint) for r in results if r.outcome == "thawed"]
        if thawed:
            _say(syslog.LOG_WARNING, "the guardian (pid %d) of a held freeze died before its "
                 "thaw; thawed %s from its record: the lease ended early, the snapshot it was "
                 "for is not consistent" % (pid, ", ".join(thawed)))
        if failed:
            _say(syslog.LOG_ERR, "the guardian (pid %d) of a held freeze died; from its record "
                 "%s: %s" % (pid, record, "; ".join("%s: %s" % (r.mountpoint, r.outcome)
                                                    for r in failed)))
            return 1
        return 0
    finally:
        lock.release()


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m %s" % WATCH_MODULE)
    p.add_argument("--watch-lease", required=True, metavar="RECORD")
    p.add_argument("--guardian", required=True, metavar="PID:START")
    args = p.parse_args(argv)
    pid, _, start = args.guardian.partition(":")
    try:
        return watch_lease(args.watch_lease, int(pid), int(start))
    except (OSError, ValueError, BusyError, CoreUnavailable) as exc:
        _say(syslog.LOG_ERR, "the lease's record %s could not be used: %s"
             % (args.watch_lease, exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
