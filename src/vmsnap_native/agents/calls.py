"""The agent's calls of ``vmsnap hook``: each one a thin client of the
session holder (holder.py), which alone runs scripts, freezes, thaws and
decides.

- the first phase takes the run lock (ending this agent's previous session
  first if it is still open: the agent restarted or gave up on it), forks
  the holder with the lock, and returns what the holder answers once the
  snapshot may begin (or, when it must not, once the cycle has ended);
- the last phase hands itself to the holder over the session's socket and
  returns the holder's verdict; with no live session it says so and does
  nothing else;
- a check phase (DLM dry-run) validates.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
import time
from collections.abc import Container, Iterable

from .session import expired_path, read_trusted, receive, send, session_path, summary
from .table import AgentSpec

# A last call reaches the holder through the session's file and socket
# alone (and the core, to tell whether the holder lives): the cycle, the
# lock, the log and the holder are imported where a call uses them (the
# first call, a refusal, a note of a late call), not here.
TYPE_CHECKING = False   # true for type checkers; `typing` is not imported for it
if TYPE_CHECKING:
    from typing import Any, Literal

    from ..lock import RunLock

# How long a first call waits for the session it superseded to let go of the lock.
SUPERSEDE_MARGIN_S = 10.0


def say(lines: Iterable[str]) -> None:
    """Human text on stderr (the agents keep it in their own logs, or drop it)."""
    try:
        for line in lines:
            print(line, file=sys.stderr)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _alive(who: dict[str, Any]) -> bool:
    from .._core import core
    pid, start = who.get("pid", 0), who.get("starttime")
    return bool(pid) and bool(core()[1].vmsnap_process_matches(int(pid), int(start or 0)))


def _connect(state: dict[str, Any]) -> socket.socket | None:
    """The live session's socket, or None."""
    path = state.get("socket")
    if not path or not _alive(state.get("watchdog") or {}):
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.connect(path)
    except OSError:
        s.close()
        return None
    return s


def _open_session(spec: AgentSpec) -> dict[str, Any] | None:
    try:
        return read_trusted(session_path(spec.name))
    except (OSError, ValueError):
        return None


class HookCall:
    """One call of ``vmsnap hook``."""

    def __init__(self, spec: AgentSpec, phase: str, args: Iterable[str], config: str | None,
                 log_file: str) -> None:
        self.spec, self.phase, self.args = spec, phase, list(args)
        self.config = config
        self.log_file = log_file

    def _refuse(self, why: str) -> int:
        from ..errors import Error
        from ..logbook import Logbook
        from ..result import Result
        res = Result(status="failed")
        res.add_error(Error.of("AnotherRunInProgress", why))
        log = Logbook(self.log_file or None)
        try:
            log.error("hook %s %s: %s", self.spec.name, self.phase, why)
        finally:
            log.close()
        say(summary(self.spec.name, self.phase, res))
        return self.spec.exit_status("busy")

    # ---- first phase
    def begin(self) -> int:
        from .. import cycle
        from ..errors import BusyError
        from ..lock import RunLock
        from ..logbook import Logbook
        lock = RunLock()
        try:
            lock.acquire()
        except BusyError as exc:
            why = self._supersede()
            if why:
                return self._refuse(why if why is not True else str(exc))
            try:
                lock.acquire()
            except BusyError as exc2:
                return self._refuse(str(exc2))
        try:
            try:
                log = Logbook(self.log_file or None)
                try:
                    cycle.recover_stale(log)
                finally:
                    log.close()
            except BusyError as exc:
                return self._refuse(str(exc))
            try:   # a note about an earlier session's end is for that session's agent only
                os.unlink(expired_path(self.spec.name))
            except FileNotFoundError:
                pass
            return self._fork_holder(lock)
        finally:
            lock.release()

    def _supersede(self) -> str | Literal[True] | None:
        """The lock is taken.  If this agent's own session holds it, that
        session is ended first (through its holder: thaw, thaw hooks,
        post-script, under its lock) and the lock waited for; returns None
        then, else why this first call is refused (True: the lock's own words)."""
        state = _open_session(self.spec)
        if state is None:
            return True
        if self.spec.refuse_second:
            return ("a %s session (begun %s) is still open: `%s` must come first"
                    % (self.spec.name, state.get("begun_at"), self.spec.last[0]))
        conn = _connect(state)
        if conn is None:
            return True
        with conn:   # answered once it has run its thaw hooks and post-script (their timeouts)
            send(conn, {"supersede": self.phase})
            receive(conn, None)
        end = time.monotonic() + SUPERSEDE_MARGIN_S
        while _alive(state.get("watchdog") or {}) and time.monotonic() < end:
            time.sleep(0.02)
        return None

    def _fork_holder(self, lock: RunLock) -> int:
        import signal

        from .holder import hold
        session_id = os.urandom(8).hex()
        assert lock._fd is not None   # begin() holds the lock
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:   # the session holder
            try:
                mine.close()
                os.setsid()
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                keep = sorted({lock._fd, theirs.fileno()})
                low = 3
                for fd in keep:
                    os.closerange(low, fd)
                    low = fd + 1
                os.closerange(low, 65536)
                os.chdir("/")
                os.umask(0o077)
                for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGPIPE):
                    signal.signal(sig, signal.SIG_IGN)
                sys.dont_write_bytecode = True   # nothing on disk while filesystems are frozen
                try:   # the OOM killer must not end a session that holds a freeze
                    with open("/proc/self/oom_score_adj", "w") as f:
                        f.write("-1000")
                except OSError:
                    pass
                lock.adopt()   # the lock names its holder: this session
                hold(self.spec, self.phase, self.config, self.log_file, theirs, lock._fd,
                     session_id)
            finally:
                os._exit(1)
        theirs.close()
        with mine:
            msg = receive(mine, None)
            if msg is None:
                say(["vmsnap hook %s %s: the session ended without an answer (see the log)"
                     % (self.spec.name, self.phase)])
                return self.spec.exit_status("pre-failed")
            if msg.get("event") == "armed":
                send(mine, {"event": "ack"})
        if not _on_devices(2, set(msg.get("frozen_devs") or ())):
            say(msg.get("lines") or [])
        return self.spec.exit_status(msg.get("outcome") or "pre-failed")

    # ---- last phase
    def end(self) -> int:
        spec = self.spec
        state = _open_session(spec)
        conn = _connect(state) if state is not None else None
        if conn is None:
            return self._no_session(state)
        with conn:   # the verdict comes after the thaw hooks and the post-script (bounded
            send(conn, {"phase": self.phase, "args": self.args})   # by their timeouts), or EOF
            msg = receive(conn, None)
        if msg is None or msg.get("event") != "done":
            return self._no_session(None, late=True)
        say(msg.get("lines") or [])
        return spec.exit_status(msg.get("outcome") or "post-failed")

    def _no_session(self, state: dict[str, Any] | None, late: bool = False) -> int:
        """No live session takes this call: it came after the session ended
        (deadline, a stop, vmsnap killed), or none began."""
        spec = self.spec
        note = None
        try:
            note = read_trusted(expired_path(spec.name))
            os.unlink(expired_path(spec.name))
        except (OSError, ValueError):
            pass
        if state is not None and not _alive(state.get("watchdog") or {}):
            try:   # its holder is gone (killed): the file is all that is left of it
                if read_trusted(session_path(spec.name)).get("session") == state.get("session"):
                    os.unlink(session_path(spec.name))
            except (OSError, ValueError):
                pass
            note = note or {"begun_at": state.get("begun_at"),
                            "reason": "vmsnap's session process died (the reaper thawed and "
                                      "ran the post-script)"}
        if note is not None or late:
            msg = ("`%s` came after the snapshot begun %s had ended (%s): this snapshot is not "
                   "consistent" % (self.phase, (note or {}).get("begun_at", "?"),
                                   (note or {}).get("reason", "it ended meanwhile")))
            self._log_error(msg)
            say(["vmsnap hook %s %s: %s" % (spec.name, self.phase, msg)])
            return spec.exit_status("expired")
        say(["vmsnap hook %s %s: no open session, nothing to do" % (spec.name, self.phase)])
        return spec.exit_status("no-session")

    def _log_error(self, msg: str) -> None:
        from ..logbook import Logbook
        log = Logbook(self.log_file or None)
        try:
            log.error("hook %s: %s", self.spec.name, msg)
        finally:
            log.close()

    # ---- dry run (DLM)
    def check(self) -> int:
        from .. import cycle
        plan = cycle.make_plan(self.config)
        problems = [p for p in ("%s: %s" % (e.code, e.message) for e in
                                ([plan.config_problem] if plan.config_problem else []))]
        for chk in (plan.pre_check, plan.post_check):
            if chk is not None and chk.problem is not None:   # refused
                problems.append("%s: %s" % (chk.problem.code, chk.problem.message))
        say(["vmsnap hook %s %s: %s" % (self.spec.name, self.phase,
                                         "ready" if not problems else "not ready")]
            + ["  %s" % p for p in problems])
        return self.spec.exit_status("problems" if problems else "ok")


def _on_devices(fd: int, devs: Container[int]) -> bool:
    """Whether FD is a regular file on one of DEVS (writing would block while frozen)."""
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_dev in devs
