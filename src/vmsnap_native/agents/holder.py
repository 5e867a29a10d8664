"""The session of one agent snapshot: a ``Cycle`` whose snapshot step is
the agent's own, from its first call to its last.

The first phase forks this process (the session holder, the "watchdog" of
the session file) and hands it the run lock.  It runs the very cycle
``vmsnap run`` runs -- pre-script, hooks' ``freeze``, the freeze where
vmsnap freezes for the agent -- and its snapshot step waits for the agent's
last call on the session's socket, until freezeTimeoutInSeconds.  So the
stop handlers, the reaper's resume, the run lock and the verdict (``decide``)
are the ones of a run, not copies:

- the last call comes: thaw (where vmsnap froze), thaw hooks, post-script;
- it does not come in time, or the session is told to stop (SIGTERM,
  SIGINT, SIGHUP), or the first call dies before its answer, or a new first
  call supersedes it: the same, with the verdict saying why; where the agent
  froze, every filesystem it could have frozen is thawed first, parents
  first (agentfs);
- this process is SIGKILLed: the guardian (vmsnap's freeze) or the reaper's
  resume (the agent's freeze, from its record) thaws, and the resume runs
  the thaw hooks and the post-script.

Where the agent freezes by itself, its first call's answer lets it freeze
at any instant after: a session that ends before the deadline without the
agent's last call (a signal, the first call's death) has thawed and resumed
the application, yet the agent's FIFREEZE may still come.  So this process
stays until the deadline (its lock, its record, a resume that thaws from the
record should it be SIGKILLed meanwhile; further stop signals ignored) and
then thaws what the agent froze: nothing stays frozen past the deadline.

A late last call finds no session (or this one's end) and is told so; it
runs nothing and thaws nothing.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time

from .. import _resume, cycle, decide
from ..cycle import Cycle
from ..errors import Error
from ..freeze import runtime_dir
from ..logbook import Logbook
from ..plan import Plan, make_plan
from ..result import Result
from .agentfs import AgentFilesystems, _starttime
from .session import (
    expired_path,
    peer_is_root,
    read_trusted,
    receive,
    send,
    session_path,
    summary,
    write_atomically,
)
from .table import AgentSpec

# How long a session waits for its first call to take its answer.
ACK_WAIT_S = 10.0


class AgentStep:
    """The snapshot step of an agent session: waits on the session's socket
    for the agent's last call (or a first call that supersedes this one)."""

    def __init__(self, session: "AgentSession") -> None:
        self.s = session
        self.__qualname__ = "%s snapshot (until `%s`)" % (session.spec.name,
                                                          session.spec.last[0])

    def __call__(self) -> str | None:
        s = self.s
        s.armed.set()      # the first call gets its answer now
        while not s.step_over:
            try:
                conn, _ = s.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return None
            if not peer_is_root(conn):
                conn.close()
                continue
            req = receive(conn, 5.0) or {}
            phase = req.get("phase")
            if s.step_over:
                conn.close()   # too late: this call gets no answer, so it says so
                return None
            if req.get("supersede"):
                s.callers.append(conn)
                s.ended_by = "superseded"
                raise SessionEnded("a new `%s` came before the `%s` of this snapshot: %s "
                                   "restarted or gave up on it" % (req.get("supersede"),
                                                                   s.spec.last[0], s.spec.name))
            if phase in s.spec.last:
                s.callers.append(conn)
                s.ended_by = "last"
                s.last_phase = phase
                if phase in s.spec.failed_last:
                    raise SessionEnded("%s says the snapshot failed (%s)" % (s.spec.name, phase))
                return "%s `%s`" % (s.spec.name, phase)
            send(conn, {"error": "unexpected call %r" % phase})
            conn.close()
        return None


class SessionEnded(Exception):
    """The agent's step ended without a snapshot (a failure the agent reported,
    or a newer first call)."""


class AgentSession(Cycle):
    """One agent snapshot, run as a Cycle in the session holder."""

    first_acked: bool   # set by the first call's thread once it took its answer
    thawed_for_agent: list[str]   # set as the freeze finishes, where the agent froze

    def __init__(self, plan: Plan, spec: AgentSpec, log: Logbook,
                 listener: socket.socket) -> None:
        self.spec = spec
        self.listener = listener
        self.listener.settimeout(0.2)
        self.armed = threading.Event()
        self.step_over = False
        self.ended_by: str | None = None     # "last", "superseded", or None (not ended by a call)
        self.last_phase: str | None = None
        self.callers: list[socket.socket] = []   # calls waiting for this session's verdict
        self.agent_fs: AgentFilesystems | None = None
        self.step_deadline_ns: int | None = None   # CLOCK_MONOTONIC: when the step ends at the latest
        self.lingers = False   # ended early, the agent's freeze may still come: see linger()
        super().__init__(plan, AgentStep(self), log)

    # -- who freezes -------------------------------------------------------------------
    def run_freeze(self) -> None:
        if not self.spec.agent_freezes:
            return super().run_freeze()
        # the agent freezes once the first call returns: from now on nothing is
        # written (the log is held) until it has thawed or vmsnap has thawed for it
        self.agent_fs = AgentFilesystems.open()
        if self.agent_fs.left_out:
            self.res.warnings.append("not thawed by vmsnap if %s leaves it frozen: %s"
                                     % (self.spec.name, ", ".join(self.agent_fs.left_out)))
        self._register_resume()   # the resume now also thaws from the agent's record
        self.log.hold()
        cycle.in_window = True
        self.out.freeze = decide.AGENT_FROZE

    def run_snapshot(self) -> None:
        # the deadline run_snapshot gives the step where the agent freezes (nothing frozen by us)
        self.step_deadline_ns = time.monotonic_ns() + int(self.plan.freeze_timeout * 1e9)
        super().run_snapshot()

    def finish_freeze(self) -> None:
        self.step_over = True
        fs = self.agent_fs
        if fs is not None and fs.record_path and not os.path.exists(fs.record_path) \
                and self.out.snapshot == decide.TAKEN:
            # only a thaw from the record removes it: `vmsnap thaw --force` ran meanwhile
            self.out.thawed_early = ("`vmsnap thaw --force` thawed what %s froze before its "
                                     "`%s`" % (self.spec.name, self.last_phase))
        if self.agent_fs is not None:
            if self.ended_by != "last":   # no `thaw` came: vmsnap thaws what the agent froze
                self.thawed_for_agent = self.agent_fs.thaw()
            else:
                self.thawed_for_agent = []
        super().finish_freeze()
        for n in getattr(self, "thawed_for_agent", []):
            self.log.warning("thawed what %s left frozen: %s", self.spec.name, n)
        # the first call got its answer (the agent may be freezing right now), the session
        # ended before the deadline and not by the agent's own last call or a new first call
        self.lingers = (self.agent_fs is not None and self.ended_by is None
                        and self.armed.is_set() and self.step_deadline_ns is not None
                        and time.monotonic_ns() < self.step_deadline_ns)
        if self.agent_fs is not None and not self.lingers:
            self.agent_fs.close()

    def _clear_resume(self) -> None:
        fs = self.agent_fs
        if self.lingers and fs is not None and fs.record_path and self.plan.config_path:
            # the post-script has run; should this process die before linger() has
            # thawed, the reaper thaws from the agent's record at the deadline, as
            # linger() would (the agent may freeze until then), and runs nothing else
            _resume.register(self.plan.config_path, log_file=self.log.path,
                             thaw_records=[fs.record_path],
                             thaw_at_ns=self.step_deadline_ns or 0,
                             timeout=self.plan.settings.timeout, retries=0)
            self.resume_registered = True
            return
        super()._clear_resume()

    def linger(self) -> None:
        """After an early end (``lingers``): waits until the step's deadline and
        thaws whatever the agent froze meanwhile (its FIFREEZE after our thaw),
        parents first.  Stop signals are ignored meanwhile (the wait is bounded by
        the deadline); a death leaves the thaw to the reaper's resume, which thaws
        from the agent's record at the same deadline and runs nothing else (the post-script
        has run).  The log is held: it may be on a filesystem the agent froze."""
        fs = self.agent_fs
        if fs is None or not self.lingers or self.step_deadline_ns is None:
            return
        stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in stops}
        self.log.hold()
        notes: list[str] = []
        try:
            while True:
                left = self.step_deadline_ns - time.monotonic_ns()
                if left <= 0:
                    break
                time.sleep(min(left / 1e9, 0.25))
            fs.rearm()
            notes = fs.thaw()
        finally:
            self.lingers = False
            fs.close()   # the record goes first: a death in between leaves nothing to thaw
            self._clear_resume()
            self.log.release()
            for sig, h in old.items():
                signal.signal(sig, h)
        for n in notes:
            self.log.warning("the session had ended; at its deadline, thawed what %s froze "
                             "after: %s", self.spec.name, n)

    def resume_record(self) -> str | None:
        if self.agent_fs is not None:
            return self.agent_fs.record_path
        return super().resume_record()


def outcome_of(res: Result, first: bool, armed: bool) -> str:
    """What the agent is told, as an AgentSpec outcome."""
    codes = {e.code for e in res.errors}
    if first and not armed:
        if "Pre-ScriptTimeout" in codes:
            return "pre-timeout"
        if codes & {"FsFreezeFailed", "UnableToOpenMount", "FsFreezeTimeout"}:
            return "freeze-failed"
        return "pre-failed"
    if codes & {"FsFreezeTimeout", "FsThawedEarly", "Interrupted"}:
        return "expired"
    if any(e.code.startswith("Post-") for e in res.errors):
        return "post-failed"
    return "ok"


def _keep_out(plan: Plan, spec: AgentSpec) -> None:
    """Where vmsnap freezes for the agent, the filesystems the agent needs to
    deliver its last call (/, /usr, /var, vmsnap's own) are left out."""
    keep_out: dict[int, str] = {}
    for p in ("/", "/usr", "/var", sys.prefix, os.path.dirname(os.path.dirname(__file__)),
              runtime_dir()):
        try:
            keep_out.setdefault(os.stat(p).st_dev, p)
        except OSError:
            pass
    kept = []
    for c in plan.selection.eligible:
        dev: int | None
        try:
            dev = os.stat(c.mount.mountpoint).st_dev
        except OSError:
            dev = None
        if dev in keep_out:
            plan.warnings.append("%s not frozen: it holds %s, which the %s agent needs to call "
                                 "the last phase" % (c.mount.mountpoint, keep_out[dev], spec.name))
            continue
        kept.append(c)
    plan.selection.eligible = kept


def hold(spec: AgentSpec, phase: str, config: str | None, log_file: str,
         first: socket.socket, lock_fd: int, session_id: str) -> None:
    """The session holder's life (in the forked process; never returns)."""
    code = 0
    log = Logbook(log_file or None)
    path = session_path(spec.name)
    sock_path = os.path.join(runtime_dir(), "hook-%s-%s.sock" % (spec.name, session_id))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    session: AgentSession | None = None
    try:
        listener.bind(sock_path)
        listener.listen(4)
        plan = make_plan(config)
        if not spec.agent_freezes and plan.selection is not None:
            _keep_out(plan, spec)
        log.info("hook %s %s: config %s, session %s", spec.name, phase, plan.config_path,
                 session_id)
        begun = time.time()
        state = {"session": session_id, "agent": spec.name, "phase": phase,
                 "config": plan.config_path, "socket": sock_path,
                 "begun_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(begun)),
                 "freeze_timeout": plan.freeze_timeout,
                 "deadline_wall": begun + plan.freeze_timeout,
                 "watchdog": {"pid": os.getpid(), "starttime": _starttime(os.getpid())},
                 "selection": [{"mountpoint": c.mount.mountpoint}
                               for c in plan.selection.eligible] if plan.selection else []}
        write_atomically(path, state)
        session = AgentSession(plan, spec, log, listener)
        watcher = threading.Thread(target=_first_call, args=(session, spec, phase, first),
                                   name="vmsnap-first-call", daemon=True)
        watcher.start()
        res = session.run()
        if session.lingers:
            log.hold()   # the agent may be freezing the log's filesystem: written at the end
        first_answered = session.armed.is_set() and getattr(session, "first_acked", False)
        if first_answered and session.ended_by != "last":
            write_atomically(expired_path(spec.name), {
                "session": session_id, "begun_at": state["begun_at"],
                "freeze_timeout": plan.freeze_timeout,
                "reason": "; ".join(e.message for e in res.errors) or "ended"})
        log.info("hook %s %s: status %s, consistency %s, errors %s", spec.name,
                 session.last_phase or "(session)", res.status, res.consistency,
                 ",".join(e.code for e in res.errors) or "none")
        log.info("result %s", res.to_json(sort_keys=True))
        if not first_answered:   # the first call is still there: this is its answer
            outcome = outcome_of(res, True, False)
            send(first, {"event": "done", "outcome": outcome,
                         "lines": summary(spec.name, phase, res)})
        for conn in session.callers:
            outcome = outcome_of(res, False, True) if session.ended_by == "last" else "ok"
            send(conn, {"event": "done", "outcome": outcome,
                        "lines": summary(spec.name, session.last_phase or "session", res)})
            conn.close()
        if session.lingers:   # late calls find no session now: told it expired, at once
            _unpublish(path, sock_path, session_id)
            listener.close()
            session.linger()   # the agent may still freeze: thawed at the deadline
    except BaseException as exc:   # logged, and the callers told; never silent
        code = 1
        log.release()
        log.error("hook %s: the session failed: %s: %s", spec.name, type(exc).__name__, exc)
        send(first, {"event": "done", "outcome": "pre-failed",
                     "lines": ["vmsnap hook %s %s: failed: %s" % (spec.name, phase, exc)]})
    finally:
        _unpublish(path, sock_path, session_id)
        log.close()
        os.close(lock_fd)
    os._exit(code)


def _unpublish(path: str, sock_path: str, session_id: str) -> None:
    """The session's socket and file (if still this session's) removed."""
    try:
        os.unlink(sock_path)
    except OSError:
        pass
    try:
        st = read_trusted(path)
        if st.get("session") == session_id:
            os.unlink(path)
    except (OSError, ValueError):
        pass


def _first_call(session: AgentSession, spec: AgentSpec, phase: str, first: socket.socket) -> None:
    """Gives the first call its answer once the session is armed (the
    snapshot step began), and takes its acknowledgement; if the first call
    dies before that, the session stops: the agent will not snapshot."""
    while not session.armed.wait(0.2):
        if session.step_over:
            return   # ended before its step: the holder answers the first call itself
        if _dead(first):
            os.kill(os.getpid(), signal.SIGTERM)   # the stop handlers: thaw, post-script
            return
    res = session.res
    lines = ["vmsnap hook %s %s: %s; %s; ends in %gs if `%s` never comes"
             % (spec.name, phase,
                "pre-script %s" % ({decide.OK: "ok", decide.NOT_CONFIGURED: "not configured"}
                                   .get(session.out.pre.state, "failed")),
                "%d filesystem(s) frozen by vmsnap" % sum(1 for m in session.session.mounts
                                                          if m.frozen)
                if session.session is not None else "the agent freezes now",
                session.plan.freeze_timeout, spec.last[0])]
    lines += ["  warning: %s" % w for w in res.warnings]
    so_far = decide.decide(session.out, session.settings).errors
    lines += ["  error %s (%d): %s" % (e.code, e.number, e.message) for e in so_far]
    devs: list[int] = []
    if session.session is not None:
        for m in session.session.mounts:
            if m.frozen:
                try:
                    devs.append(os.stat(m.mountpoint).st_dev)
                except OSError:
                    pass
    send(first, {"event": "armed", "outcome": "ok", "lines": lines, "frozen_devs": devs})
    ack = receive(first, ACK_WAIT_S)
    if ack is not None and ack.get("event") == "ack":
        session.first_acked = True
        return
    os.kill(os.getpid(), signal.SIGTERM)


def _dead(sock: socket.socket) -> bool:
    """Whether the peer of SOCK is gone (EOF pending)."""
    try:
        sock.setblocking(False)
        try:
            return sock.recv(1, socket.MSG_PEEK) == b""
        finally:
            sock.setblocking(True)
    except BlockingIOError:
        return False
    except OSError:
        return True


__all__ = ["AgentSession", "hold", "session_path", "expired_path", "read_trusted", "send",
           "receive", "summary", "Error"]
