"""The snapshot cycle (SPEC §5): pre-script, hooks, freeze, snapshot, thaw,
hooks, post-script.  The phases run and record facts into a
``decide.Outcome``; ``decide.decide`` says what they are worth.

Every way out after the pre-script ran resumes the application: a signal
(SIGINT, SIGTERM, SIGHUP) or an exception thaws at once, then the thaw hooks
and the post-script run, and only then is anything released from the
reaper; a SIGKILL leaves that to the reaper's resume command (_resume.py).

Inside the freeze window nothing is written to disk on vmsnap's side (the
log is held in memory), nothing is printed, and no module is imported for
the first time: everything used there is imported at the top of this file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence

from . import _resume, decide, gate, gentle, metrics, policy, step
from ._core import core
from .config import Config
from .decide import Outcome, StepFact
from .errors import (
    FS_FREEZE_FAILED,
    FS_FREEZE_TIMEOUT,
    SNAPSHOT_FAILED,
    UNABLE_TO_OPEN_MOUNT,
    BusyError,
    CoreUnavailable,
    Error,
    FreezeError,
)
from .freeze import FreezeSession, active_records, thaw_recorded
from .lock import RunLock
from .logbook import Logbook
from .plan import Plan as Plan  # re-exported: the CLI's and tests' name
from .plan import (
    dry_run_result,
    missing_mount_errors,
    problem_error,
    script_facts,
    withheld_warning,
)
from .plan import make_plan as make_plan  # re-exported: the CLI's and tests' name
from .process import ProcessResult, unwatch_group
from .result import FreezeResult, Result, ScriptResult
from .scripts import run_script
from .stop import Interrupted, StopSignals

TYPE_CHECKING = False   # true for type checkers; `typing` is not imported for it
if TYPE_CHECKING:
    from .hooks import Hook

QUIESCE_LOST_EXIT = decide.QUIESCE_LOST_EXIT
STEP_STOP_AFTER_DEADLINE_NS = 250_000_000

# True while filesystems may be frozen; tests watch it (no imports, no writes).
in_window = False


def _script_fact(role: str, who: str, sr: ScriptResult, last: ProcessResult,
                 all_timed_out: bool, hint: str | None = None) -> StepFact:
    """What a script's (or hook call's) ScriptResult says, as a fact; HINT:
    the policy's guess why it fails (Windows line endings, say)."""
    if sr.ok:
        return StepFact(role, decide.OK, who)
    if role == "post" and sr.exit_code == QUIESCE_LOST_EXIT:
        return StepFact(role, decide.QUIESCE_LOST, who)
    if all_timed_out:
        return StepFact(role, decide.TIMED_OUT, who, "attempts: %d" % sr.attempts)
    detail = "%s (attempts: %d)" % (last.describe(), sr.attempts)
    return StepFact(role, decide.FAILED, who, detail + ("; likely why: %s" % hint if hint else ""))


class Cycle:
    def __init__(self, plan: Plan, snapshot: step.Snapshot, log: Logbook,
                 freeze_at: str | None = None) -> None:
        self.plan = plan
        self.freeze_at = freeze_at   # --freeze-at FILE: arm, then freeze at its instant (gate.py)
        self.gate_armed: dict[str, float] = {}   # the gate's clock reading at arming
        self.snapshot = snapshot
        self.log = log
        self.res = Result()
        self.out = Outcome(config_error=plan.config_problem, one_disk=plan.one_disk,
                           hooks_configured=bool(plan.hooks))
        self.settings = plan.decision_settings
        self.t0 = time.monotonic_ns()
        self.session: FreezeSession | None = None
        self.hooks_started: list[Hook] = []   # hooks whose freeze call started: each gets its thaw
        self.watched: list[int] = []         # process groups the scripts left; released at the end
        self.resume_registered = False
        self.step_program: step.StepProgram | None = None
        self.gentle: gentle.GentlePresync | None = None   # paced writeback during the pre-script

    # -- helpers -------------------------------------------------------------
    def phase(self, name: str, start_ns: int) -> None:
        now = time.monotonic_ns()
        entry = {"phase": name, "start_ms": round((start_ns - self.t0) / 1e6, 3),
                 "duration_ms": round((now - start_ns) / 1e6, 3)}
        self.res.phases.append(entry)
        self.log.info("phase %s: %.3f ms (at +%.3f ms)", name, entry["duration_ms"],
                      entry["start_ms"])

    def note(self, error: Error) -> Error:
        """Logs an error a phase found; the verdict lists it (decide)."""
        self.log.error("%s: %s", error.code, error.message)
        return error

    def _run_script(self, role: str, chk: policy.ScriptCheck, params: Iterable[str],
                    retries: int, hook: tuple[Hook, str] | None = None
                    ) -> tuple[ScriptResult, StepFact]:
        """Runs a checked script (or a HOOK's call: (hook, action)); returns
        (ScriptResult, StepFact).  Stopped by a signal: recorded as stopped,
        and Interrupted goes on."""
        name = "hook %s %s" % (hook[0].name, hook[1]) if hook else None
        who = name or chk.path
        try:
            sr, last, all_timed_out = run_script(chk, params, retries, self.plan.settings.timeout,
                                                 log=self.log, name=name, watched=self.watched)
        except Interrupted:
            # its process group was SIGKILLed on the way out (process.Process.wait)
            self._record_script(role, hook, ScriptResult(path=chk.path, ran=True,
                                                         signal=signal.SIGKILL),
                                StepFact(role, decide.STOPPED, who))
            raise
        sr.containment = getattr(last, "containment", None)
        return sr, _script_fact(role, who, sr, last, all_timed_out, getattr(chk, "hint", None))

    def _record_script(self, role: str, hook: tuple[Hook, str] | None, sr: ScriptResult,
                       fact: StepFact) -> None:
        """Keeps a script's (or a hook call's) result and fact; logs its error."""
        if hook is not None:
            self.res.hooks.append({"hook": hook[0].name, "action": hook[1], **sr.fields(),
                                   "error": fact.problem.message if fact.problem else None})
            (self.out.hook_freeze if role == "pre" else self.out.hook_thaw).append(fact)
        elif role == "pre":
            self.res.pre_script, self.out.pre = sr, fact
        else:
            self.res.post_script, self.out.post = sr, fact
        err = decide.step_error(fact, self.settings)
        if err:
            self.note(err)

    # -- the reaper's resume command (SIGKILL of vmsnap) ------------------------
    def _register_resume(self) -> None:
        """Tells the reaper what resumes the application if vmsnap is SIGKILLed:
        _resume.py runs the thaw hooks and (if the pre-script ran) the
        post-script, once the guardian (if any) has thawed and exited."""
        if not self.plan.config_path:
            return
        wait_for: list[tuple[int, int]] = []
        until = 0
        if self.session is not None and self.session.guardian_pid:
            wait_for.append((self.session.guardian_pid, _guardian_starttime(self.session)))
            until = self.session.deadline_ns
        _resume.register(
            self.plan.config_path, log_file=self.log.path,
            post=self.out.pre.state not in (decide.NOT_CONFIGURED, decide.REFUSED, decide.WITHHELD),
            hooks=[h.path for h in self.hooks_started], wait_for=wait_for,
            thaw_records=[r for r in [self.resume_record(),
                                      self.gentle and self.gentle.record_path] if r],
            timeout=self.plan.settings.timeout, retries=self.plan.settings.post_retries,
            wait_until_ns=until)
        self.resume_registered = True

    def resume_record(self) -> str | None:
        """A freeze record the resume thaws before it resumes: the guardian's.
        The resume runs once the guardian is gone; a guardian that thawed
        removed its record, so a record still there means it died holding
        what it recorded as frozen or "may be ours" (a freeze wave cut short
        by a SIGKILL of both), and that is thawed first."""
        if self.session is not None and self.session.record_path:
            return self.session.record_path
        return None

    def _clear_resume(self) -> None:
        if not self.resume_registered:
            return
        _resume.clear()   # the run ended: nothing left for the reaper to do
        self.resume_registered = False

    # -- phases --------------------------------------------------------------
    def run_pre(self) -> None:
        plan = self.plan
        if plan.config_problem:
            self.note(plan.config_problem)
        pre, post = script_facts(plan)
        if pre.state == decide.WITHHELD:   # the post-script cannot run: its refusal is the error
            self.res.warnings.append(withheld_warning(plan))
            self.log.warning(self.res.warnings[-1])
            self._record_script("post", None, ScriptResult(path=post.who), post)
        if pre.state != decide.OK:   # not configured, refused, or withheld
            if pre.state != decide.NOT_CONFIGURED:
                self._record_script("pre", None, ScriptResult(path=pre.who), pre)
            return
        # from here the pre-script may have paused the application: the post-script must run
        assert plan.config is not None and plan.pre_check is not None   # the pre-script is OK
        self.out.pre, self.out.post = StepFact("pre", decide.STOPPED, pre.who), post
        # kept before it begins: a stop signal while it starts still finds it to
        # close (the devices put back); its values saved before the resume is
        # registered (which restores from its record), its first cap set after
        self.gentle = gentle.for_plan(plan)
        if self.gentle is not None:
            self.gentle.save()
        self._register_resume()
        if self.gentle is not None:
            self.gentle.pace()
        t = time.monotonic_ns()
        sr, fact = self._run_script("pre", plan.pre_check, plan.config.pre_params,
                                    plan.config.pre_retries)
        self.phase("pre-script", t)
        self._record_script("pre", None, sr, fact)

    def run_hooks(self, action: str) -> None:
        """Each hook's freeze call in name order; the thaw call, in reverse order,
        for every hook whose freeze call started.  Each checked as it is called."""
        if action == "freeze":
            todo = [(h, chk) for h, chk in self.plan.hook_checks()]
        else:
            todo = [(h, policy.check_hook(h.path, "post")) for h in reversed(self.hooks_started)]
        if not todo:
            return
        t = time.monotonic_ns()
        role = "pre" if action == "freeze" else "post"
        retries = self.plan.settings.pre_retries if role == "pre" else \
            self.plan.settings.post_retries
        for h, chk in todo:
            name = "hook %s %s" % (h.name, action)
            if chk.problem is not None:   # refused
                self._record_script(role, (h, action), ScriptResult(path=h.path), StepFact(
                    role, decide.REFUSED, name,
                    problem=problem_error(chk.problem, "hook %s: " % h.name)))
                continue
            if action == "freeze":
                self.hooks_started.append(h)   # attempted: it will get its thaw
                self._register_resume()
            # a thaw call that ended is not run again by the resume
            with _resume.job(hook=h.path) if action == "thaw" else _no_job():
                sr, fact = self._run_script(role, chk, [action], retries, (h, action))
            self._record_script(role, (h, action), sr, fact)
        self.phase("hooks %s" % action, t)

    def run_freeze(self) -> None:
        global in_window
        plan = self.plan
        if plan.selection.missing:
            self._freeze_failed(missing_mount_errors(plan))
            return
        g = self.gentle
        if g is not None:
            g.stop()   # the session takes over its caps, from the values it saved
        try:
            self.session = FreezeSession(plan.selection.eligible, timeout=plan.freeze_timeout,
                                         expedite_rcu=plan.settings.expedite_rcu,
                                         dirty_cap_mb=g.cap_mib if g and g.active else
                                         plan.settings.dirty_cap_mib,
                                         dirty_saved=g.saved() if g else None)
            self.session.start()
        except OSError as exc:
            self.session = None
            self._freeze_failed([UNABLE_TO_OPEN_MOUNT.error("%s: %s" % (exc.filename,
                                                                        exc.strerror))])
            return
        except FreezeError as exc:
            self.session = None
            self._freeze_failed([exc.error()])
            return
        # the resume waits for the guardian's thaw, then undoes from the session's record
        # what a guardian killed with us could not: the presync's dirty limits and
        # rcu_expedited (and a freeze), so it is registered even with no script to run
        self._register_resume()
        t = time.monotonic_ns()
        self.log.hold()
        in_window = True
        try:
            self.session.freeze()
        except FreezeError as exc:
            self.end_window()
            self._freeze_failed([exc.error()])
            return
        self.phase("freeze", t)
        failed = [m for m in self.session.mounts if m.state in ("failed", "skipped", "freezing")]
        if failed or self.session.deadline_hit:
            self.end_window()
            errs = [FS_FREEZE_FAILED.error("%s: %s" % (m.mountpoint, m.error or m.state))
                    for m in failed]
            if self.session.deadline_hit and not failed:
                errs.append(FS_FREEZE_TIMEOUT.error("the freeze did not complete within %gs"
                                                    % plan.freeze_timeout))
            self._freeze_failed(errs)
            return
        for m in self.session.mounts:
            if m.state == "busy":
                self.res.warnings.append("%s was already frozen by someone else: left alone"
                                         % m.mountpoint)
        self.out.freeze = decide.FROZEN

    def _freeze_failed(self, errs: Iterable[Error]) -> None:
        self.out.freeze = decide.FREEZE_FAILED
        self.out.freeze_errors = [self.note(e) for e in errs]

    def end_window(self) -> None:
        """Thaws (if a session is open) and writes the held log."""
        global in_window
        if self.session is not None and not self.session._thawed:
            t = time.monotonic_ns()
            self.session.thaw()
            self.phase("thaw", t)
        in_window = False
        self.log.release()

    def run_snapshot(self) -> None:
        # the session whose freeze holds (frozen: run_freeze opened it)
        frozen = self.session if self.out.freeze == decide.FROZEN else None
        # frozen: the guardian thaws at the deadline and the step is stopped just after, so
        # the thaw at the deadline is always the guardian's, never a race with ours
        deadline = frozen.deadline_ns + STEP_STOP_AFTER_DEADLINE_NS if frozen is not None else \
            time.monotonic_ns() + int(self.plan.freeze_timeout * 1e9)
        t = time.monotonic_ns()
        self.out.snapshot = decide.INTERRUPTED   # until the step says otherwise
        try:
            self.res.snapshot = step.result_for(self.snapshot)
            state, failure = step.run_step(self.snapshot, self.res.snapshot, deadline,
                                           self._snapshot_env(), self.log, self.step_program)
            self.out.snapshot = state
            if failure:
                self.out.snapshot_error = self.note(SNAPSHOT_FAILED.error(failure))
        finally:
            self.phase("snapshot", t)
            if frozen is not None:   # before the thaw is asked for: did the freeze hold throughout?
                self.out.thawed_early = _thawed_early(frozen)

    def _snapshot_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["VMSNAP_PHASE"] = "snapshot"
        env["VMSNAP_FROZEN_MOUNTS"] = "\n".join(
            m.mountpoint for m in (self.session.mounts if self.session else []) if m.frozen)
        env.pop("VMSNAP_CLOCK_MOVED", None)   # ours only, never the caller's
        moved = gate.clock_moved(self.gate_armed)
        if moved is not None:   # --freeze-at: did the wall clock step during the freeze?
            env["VMSNAP_CLOCK_MOVED"] = "%+.6f %.6f" % moved
            if abs(moved[0]) > moved[1]:
                self.res.warnings.append(
                    "the wall clock moved by %+.3fs since arming (a clock step during the "
                    "freeze): this host's wall-clock times of the freeze cannot be trusted"
                    % moved[0])
                self.log.warning(self.res.warnings[-1])
        return env

    def finish_freeze(self) -> None:
        self.end_window()
        s = self.session
        fr = self.res.freeze
        if s is None:
            return
        fr.window_ms = s.window_ms
        fr.deadline_hit = s.deadline_hit
        fr.rcu_expedited = s.rcu_expedited
        fr.mounts = [m.to_dict() for m in s.mounts]
        if self.out.freeze == decide.FROZEN and s.deadline_hit and not self.out.thawed_early:
            self.out.thawed_early = decide.DEADLINE   # the guardian's thaw won the race
        if self.out.freeze == decide.FROZEN and not self.out.thawed_early:
            # an outside FITHAW (`fsfreeze -u`) leaves no trace but our thaw's EINVAL
            outside = [m.mountpoint for m in s.mounts if m.state == "not-frozen" and m.frozen]
            if outside:
                self.out.thawed_early = ("%s thawed from outside (not frozen any more when "
                                         "vmsnap thawed: `fsfreeze -u`?)" % ", ".join(outside))
        fr.thawed_early = self.out.thawed_early
        for e in decide.window_errors(self.out, self.settings):
            if e is not self.out.snapshot_error:   # that one was logged as it happened
                self.note(e)
        for m in s.mounts:
            if m.state == "thaw-failed":
                self.out.thaw_errors.append(self.note(FS_FREEZE_FAILED.error(
                    "%s: %s (run `vmsnap thaw`)" % (m.mountpoint, m.error))))

    def run_post(self) -> None:
        if self.out.post.state != decide.OK:   # not needed, or refused (already reported)
            return
        assert self.plan.config is not None and self.plan.post_check is not None   # it is OK
        self.out.post = StepFact("post", decide.STOPPED, self.plan.post_check.path)
        t = time.monotonic_ns()
        with _resume.job(post=True):   # once it ended, the resume does not run it again
            sr, fact = self._run_script("post", self.plan.post_check,
                                        self.plan.config.post_params,
                                        self.plan.config.post_retries)
        self.phase("post-script", t)
        self._record_script("post", None, sr, fact)

    # -- the whole cycle -------------------------------------------------------
    def run(self) -> Result:
        failure: BaseException | None = None
        with StopSignals() as stop:
            try:
                try:
                    self._quiesce_and_snapshot()
                finally:
                    stop.disarm()
            except Interrupted:
                pass   # stop.received names it
            except BaseException as exc:   # the same way out, then raised again
                failure = exc
            self.finish_freeze()           # thaw at once (if not done yet)
            if self.gentle is not None:    # the devices' caps put back (the guardian did, too)
                self.gentle.close()
            self.run_hooks("thaw")
            self.run_post()
            # the application is resumed: what the scripts left running is theirs now
            # (still under our handlers: a signal now must not leave the resume registered)
            self._clear_resume()
            for pgid in self.watched:
                unwatch_group(pgid)
            self.out.interrupted = stop.received
        if failure is not None:
            raise failure
        return self.verdict()

    def _quiesce_and_snapshot(self) -> None:
        plan, res, s = self.plan, self.res, self.plan.settings
        res.warnings.extend(plan.warnings)
        res.freeze = FreezeResult(enabled=s.fs_freeze_enabled)
        if plan.selection.missing:   # a mistyped mount: nothing runs, not even the pre-script
            self.out.freeze = decide.NOT_ATTEMPTED
            self.out.freeze_errors = [self.note(e) for e in missing_mount_errors(plan)]
            return
        self.run_pre()
        self.run_hooks("freeze")
        if not decide.take_snapshot(self.out, self.settings):
            self.out.freeze = decide.NOT_ATTEMPTED
            self.log.info("a script failed and continueBackupOnFailure is false: no snapshot")
            return
        self.step_program = step.prepare(self.snapshot, res.warnings, self.log)  # outside the window
        if not s.fs_freeze_enabled:
            self.out.freeze = decide.DISABLED
        elif plan.selection.eligible or plan.selection.missing:
            why_not = None if self.freeze_at is None else gate.wait_for_instant(
                self.freeze_at, [c.mount.mountpoint for c in plan.selection.eligible],
                plan.freeze_timeout, self.log, self.gate_armed)
            if why_not is None:
                self.run_freeze()
            else:
                self._freeze_failed([FS_FREEZE_FAILED.error(why_not)])
        else:
            self.out.freeze = decide.NOTHING
            res.warnings.append("no filesystem to freeze")
        if not decide.take_snapshot(self.out, self.settings):
            self.log.info("a filesystem could not be frozen: no snapshot")
            return
        self.run_snapshot()

    def verdict(self) -> Result:
        v = decide.decide(self.out, self.settings)
        res = self.res
        res.status, res.consistency, res.errors = v.status, v.consistency, list(v.errors)
        if self.out.interrupted:
            self.log.error("Interrupted: vmsnap got %s", self.out.interrupted)
        res.duration_ms = round((time.monotonic_ns() - self.t0) / 1e6, 3)
        return res


_no_job = contextlib.nullcontext


def _guardian_starttime(session: FreezeSession) -> int:
    """The guardian's /proc start time, which identifies it beyond a reused pid."""
    got = getattr(session, "guardian_starttime", None)
    if got is None and session._shared is not None:
        got = session._shared.guardian_starttime
    return int(got or 0)


def _thawed_early(session: FreezeSession) -> str | None:
    """None if every filesystem of SESSION is still frozen (nobody but the
    controller has thawed), else the cause."""
    cause = session.thawed_early()
    # the guardian says which thaw was the deadline's; 122, not 124
    deadline = session._shared is not None and session._shared.deadline_hit
    return decide.DEADLINE if cause is not None and deadline else cause


def _write_metrics(res: Result, plan: Plan, metrics_file: str | None, log: Logbook) -> None:
    """The run's Prometheus textfile (after the thaw: never inside the window)."""
    path = metrics_file if metrics_file is not None else plan.settings.metrics_file
    if not path:
        return
    try:
        metrics.write_textfile(res.to_dict(), path)
    except (OSError, metrics.MetricsFileError) as exc:
        res.warnings.append("metrics not written to %s: %s" % (path, exc))
        log.warning(res.warnings[-1])


def _failed(error: Error, log: Logbook, t0: int) -> Result:
    """A run that could not start: failed, with ERROR (an exception's, converted once)."""
    log.error("%s: %s", error.code, error.message)
    res = Result(status="failed")
    res.add_error(error)
    res.duration_ms = round((time.monotonic_ns() - t0) / 1e6, 3)
    return res


def recover_stale(log: Logbook) -> list[str]:
    """Thaws what crashed runs left frozen; refuses if a guardian still holds
    a freeze (an earlier `vmsnap freeze`)."""
    live = active_records()
    if live:
        raise BusyError("filesystems are held frozen by an earlier `vmsnap freeze` (record %s); "
                        "run `vmsnap thaw` first" % live[0])
    notes = []
    for r in thaw_recorded():
        if r.outcome == "thawed":
            notes.append("recovered: %s was left frozen by a crashed run and is now thawed"
                         % r.mountpoint)
            log.warning(notes[-1])
    return notes


def run(config: str | os.PathLike[str] | Config | None = None,
        snapshot: Sequence[str] | Callable[[], object] | None = None,
        mounts: Iterable[str] | None = None, freeze_timeout: float | None = None, *,
        log_file: str | None = None, dry_run: bool = False,
        metrics_file: str | None = None, freeze_at: str | None = None) -> Result:
    """The whole cycle of SPEC §1–§5; returns a Result (SPEC §7).

    config: a path, a Config, or None for $VMSNAP_CONFIG or the default path
    (a Config with no path: should this process be SIGKILLed, the guardian
    still thaws, but nobody runs the post-script, which the reaper runs from
    the file; and there is no gentle presync);
    snapshot: an argv list run while frozen, a callable run while frozen, or
    None for an empty step; mounts: the mount points to freeze (default: every
    eligible filesystem); freeze_timeout: seconds, overrides the config's
    freezeTimeoutInSeconds; log_file: where to append the run's log;
    metrics_file: a Prometheus textfile written after the run (default: the
    config's metricsFile; '' for none); freeze_at: a file that says when to
    freeze (gate.py: a consistency group's hosts freeze together).
    """
    t0 = time.monotonic_ns()
    log = Logbook(log_file)
    try:
        try:
            core()
        except CoreUnavailable as exc:
            return _failed(exc.error(), log, t0)
        lock = RunLock(log)   # it waits for a resume in progress, and says so
        try:
            if not dry_run:   # a dry run freezes and runs nothing: no lock, no root
                lock.acquire()
        except BusyError as exc:
            return _failed(exc.error(), log, t0)
        try:
            try:
                notes = [] if dry_run else recover_stale(log)
            except BusyError as exc:
                return _failed(exc.error(), log, t0)
            plan = make_plan(config, mounts, freeze_timeout)
            log.info("run: config %s, %d filesystem(s) to freeze, one disk: %s",
                     plan.config_path, len(plan.selection.eligible), plan.one_disk)
            if dry_run:
                res = dry_run_result(plan)
                if freeze_at is not None:
                    res.warnings.append("--freeze-at is ignored by a dry run: it neither arms "
                                        "nor waits for %s" % freeze_at)
            else:
                res = Cycle(plan, snapshot, log, freeze_at).run()
            res.warnings[:0] = lock.notes + notes
            if log.open_error:
                res.warnings.append(log.open_error)
            log.info("result: status %s, consistency %s, window %s ms, errors %s",
                     res.status, res.consistency, res.freeze.window_ms,
                     ",".join(e.code for e in res.errors) or "none")
            if not dry_run:
                _write_metrics(res, plan, metrics_file, log)
            return res
        finally:
            lock.release()
    finally:
        log.close()
