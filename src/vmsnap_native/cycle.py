"""The snapshot cycle (SPEC §5): pre-script, hooks, freeze, snapshot, thaw,
hooks, post-script, and the decision of what consistency was reached.

Inside the freeze window nothing is written to disk on vmsnap's side (the
log is held in memory), nothing is printed, and no module is imported for
the first time: everything used there is imported at the top of this file.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from . import disks, hooks, mountinfo, policy
from ._core import core
from .config import Config, config_path, parse_config, read_config_file
from .errors import BusyError, ConfigError, CoreUnavailable, FreezeError
from .freeze import FreezeSession, active_records, thaw_recorded
from .lock import RunLock
from .logbook import Logbook
from .process import Process, unwatch_group
from .result import FreezeResult, Result, ScriptResult, SnapshotResult
from .scripts import run_script

SNAPSHOT_GRACE = 1.0
# A post-script (or a hook's thaw) exits with this status to say the
# application's quiesce did not hold until the snapshot was taken (a lock
# session died, say): the snapshot is then not application-consistent.
QUIESCE_LOST_EXIT = 10
SNAPSHOT_OUTPUT_LIMIT = 256 * 1024

# True while filesystems may be frozen; tests watch it (no imports, no writes).
in_window = False


@dataclass
class Plan:
    """What a run would do, worked out before anything runs."""

    config_path: str | None
    config: Config | None                 # a valid, well-permitted configuration
    settings: Config                      # config or defaults: freeze and policy settings
    config_problem: tuple | None = None   # (code, message): 305 or 317
    pre_check: policy.ScriptCheck | None = None
    post_check: policy.ScriptCheck | None = None
    selection: mountinfo.Selection | None = None
    one_disk: bool = True
    freeze_timeout: float = 60.0
    hooks: list = field(default_factory=list)
    warnings: list = field(default_factory=list)


def make_plan(config=None, mounts=None, freeze_timeout=None) -> Plan:
    """Reads the configuration, checks permissions and scripts, selects mounts."""
    warnings = []
    cfg = None
    problem = None
    path = None
    if isinstance(config, Config):
        cfg = config
        path = config.path
    else:
        path = config_path(os.fspath(config) if config is not None else None)
        try:
            got = read_config_file(path)
        except ConfigError as exc:
            got, problem = None, ("IncorrectJSONConfigFile", str(exc))
        if got is None and problem is None:
            warnings.append("no configuration file at %s: no scripts run; the best result is "
                            "filesystem-consistent" % path)
        elif got is not None:
            data, st = got
            perm = policy.check_config_stat(st, path)
            if perm:
                problem = (perm.code, perm.message)
            else:
                try:
                    cfg = parse_config(data, path)
                except ConfigError as exc:
                    problem = ("IncorrectJSONConfigFile", str(exc))
    if problem:
        warnings.append("configuration not used (%s): scripts skipped, defaults apply" % problem[0])
    settings = cfg if cfg is not None else Config()
    if cfg is not None:
        warnings.extend(cfg.warnings)
    plan = Plan(config_path=path, config=cfg, settings=settings, config_problem=problem,
                warnings=warnings)
    plan.freeze_timeout = float(freeze_timeout or settings.freeze_timeout)
    if cfg is not None and cfg.pre_script is not None:
        plan.pre_check = policy.check_script(cfg.pre_script, "pre")
        plan.post_check = policy.check_script(cfg.post_script or "", "post")
    only = list(mounts) if mounts else settings.mounts_to_freeze
    plan.selection = mountinfo.discover(only=only, skip=settings.mounts_to_skip)
    if mounts:
        for c in plan.selection.skipped:
            if c.mount.mountpoint in {os.path.normpath(m) for m in mounts}:
                warnings.append("%s not frozen: %s" % (c.mount.mountpoint, c.reason))
    plan.one_disk = disks.single_disk([c.mount for c in plan.selection.eligible]) \
        if plan.selection.eligible else True
    if cfg is not None:
        plan.hooks = hooks.discover(settings.hooks_directory)
    return plan


class Cycle:
    def __init__(self, plan: Plan, snapshot, log: Logbook):
        self.plan = plan
        self.snapshot = snapshot
        self.log = log
        self.res = Result()
        self.t0 = time.monotonic_ns()
        self.pre_ran = False
        self.pre_ok = None           # None: no scripts configured
        self.session = None
        self.freeze_ok = False
        self.freeze_failed = False
        self.snapshot_ok = False
        self.hook_runs = []
        self.quiesce_lost = False
        self.watched = []   # process groups the scripts left; released at the end

    # -- helpers -------------------------------------------------------------
    def phase(self, name, start_ns):
        now = time.monotonic_ns()
        entry = {"phase": name, "start_ms": round((start_ns - self.t0) / 1e6, 3),
                 "duration_ms": round((now - start_ns) / 1e6, 3)}
        self.res.phases.append(entry)
        self.log.info("phase %s: %.3f ms (at +%.3f ms)", name, entry["duration_ms"],
                      entry["start_ms"])

    def error(self, code, message):
        self.res.error(code, message)
        self.log.error("%s: %s", code, message)

    # -- phases --------------------------------------------------------------
    def run_pre(self):
        plan = self.plan
        if plan.config_problem:
            self.error(*plan.config_problem)
        if plan.pre_check is None:
            return
        chk = plan.pre_check
        cfg = plan.config
        if not chk.ok:
            self.error(chk.problem.code, chk.problem.message)
            self.res.pre_script = ScriptResult(path=chk.path, ran=False)
            self.pre_ok = False
            return
        t = time.monotonic_ns()
        sr, last, all_timed_out = run_script(chk, cfg.pre_params, cfg.pre_retries, cfg.timeout,
                                             log=self.log, watched=self.watched)
        self.phase("pre-script", t)
        self.res.pre_script = sr
        self.pre_ran = True
        self.pre_ok = sr.ok
        if not sr.ok:
            self.script_failure("Pre", chk.path, sr, last, all_timed_out)

    def script_failure(self, tag, who, sr, last, all_timed_out):
        """Records why a script or a hook (WHO) failed: its quiesce was lost
        (a post/thaw exit 10), every attempt timed out, or it failed."""
        if tag == "Post" and sr.exit_code == QUIESCE_LOST_EXIT:
            self.quiesce_lost = True
            self.error("Post-ScriptExecutionFailed", "%s reports that the application's quiesce "
                       "was lost before the snapshot finished (exit %d): not "
                       "application-consistent" % (who, QUIESCE_LOST_EXIT))
        elif all_timed_out:
            self.error("%s-ScriptTimeout" % tag, "%s: every attempt (%d) exceeded %gs"
                       % (who, sr.attempts, self.plan.settings.timeout))
        else:
            self.error("%s-ScriptExecutionFailed" % tag, "%s %s (attempts: %d)"
                       % (who, last.describe(), sr.attempts))

    def run_hooks(self, action):
        if not self.plan.hooks:
            return True
        t = time.monotonic_ns()
        s = self.plan.settings
        ok = True
        if action == "freeze":
            for h in self.plan.hooks:
                run = hooks.run_hook(h, "freeze", s.pre_retries, s.timeout, self.log, self.watched)
                if run.problem is None:   # attempted: it will get its thaw
                    self.hook_runs.append((h, run))
                ok = self._hook_outcome(h, run, "Pre") and ok
        else:
            # every hook whose freeze was attempted gets its thaw, in reverse order
            for h, _ in reversed(self.hook_runs):
                run = hooks.run_hook(h, "thaw", s.post_retries, s.timeout, self.log, self.watched)
                ok = self._hook_outcome(h, run, "Post") and ok
        self.phase("hooks %s" % action, t)
        return ok

    def _hook_outcome(self, h, run, tag):
        self.res.hooks.append(run.to_dict())
        if run.problem:
            self.error(run.problem.code, run.problem.message)
            return False
        if run.result.ok:
            return True
        self.script_failure(tag, "hook %s %s" % (h.name, run.action), run.result, run.last,
                            run.all_timed_out)
        return False

    def run_freeze(self):
        global in_window
        plan = self.plan
        for p in plan.selection.missing:
            self.error("UnableToOpenMount", "%s: not a mount point" % p)
            self.freeze_failed = True
        if self.freeze_failed:
            return
        try:
            self.session = FreezeSession(plan.selection.eligible, timeout=plan.freeze_timeout,
                                         expedite_rcu=plan.settings.expedite_rcu)
            self.session.start()
        except OSError as exc:
            self.session = None
            self.error("UnableToOpenMount", "%s: %s" % (exc.filename, exc.strerror))
            self.freeze_failed = True
            return
        except FreezeError as exc:
            self.session = None
            self.error("FsFreezeFailed", str(exc))
            self.freeze_failed = True
            return
        t = time.monotonic_ns()
        self.log.hold()
        in_window = True
        try:
            self.session.freeze()
        except FreezeError as exc:
            self.end_window()
            self.error("FsFreezeFailed", str(exc))
            self.freeze_failed = True
            return
        self.phase("freeze", t)
        failed = [m for m in self.session.mounts if m.state in ("failed", "skipped", "freezing")]
        if failed or self.session.deadline_hit:
            self.end_window()
            for m in failed:
                self.error("FsFreezeFailed", "%s: %s" % (m.mountpoint, m.error or m.state))
            if self.session.deadline_hit and not failed:
                self.error("FsFreezeTimeout", "the freeze did not complete within %gs"
                           % plan.freeze_timeout)
            self.freeze_failed = True
            return
        for m in self.session.mounts:
            if m.state == "busy":
                self.res.warnings.append("%s was already frozen by someone else: left alone"
                                         % m.mountpoint)
        self.freeze_ok = True

    def end_window(self):
        """Thaws (if a session is open) and writes the held log."""
        global in_window
        if self.session is not None and not self.session._thawed:
            t = time.monotonic_ns()
            self.session.thaw()
            self.phase("thaw", t)
        in_window = False
        self.log.release()

    def run_snapshot(self):
        deadline = self.session.deadline_ns if self.freeze_ok else \
            time.monotonic_ns() + int(self.plan.freeze_timeout * 1e9)
        t = time.monotonic_ns()
        snap = self.snapshot
        if snap is None:
            self.res.snapshot = SnapshotResult(argv=[], exit_code=0)
            self.snapshot_ok = True
        elif callable(snap):
            self._snapshot_callable(snap, deadline)
        else:
            self._snapshot_argv(list(snap), deadline)
        self.phase("snapshot", t)

    def _snapshot_env(self):
        env = dict(os.environ)
        env["VMSNAP_PHASE"] = "snapshot"
        env["VMSNAP_FROZEN_MOUNTS"] = "\n".join(
            m.mountpoint for m in (self.session.mounts if self.freeze_ok else []) if m.frozen)
        return env

    def _snapshot_argv(self, argv, deadline):
        try:
            proc = Process(argv, env=self._snapshot_env(), output_limit=SNAPSHOT_OUTPUT_LIMIT)
            pr = proc.wait(deadline_ns=deadline, grace=SNAPSHOT_GRACE)
        except OSError as exc:
            self.res.snapshot = SnapshotResult(argv=argv, exit_code=None)
            self.error("SnapshotFailed", "%s: %s" % (argv[0], exc))
            return
        self.res.snapshot = SnapshotResult(argv=argv, exit_code=pr.exit_code,
                                           duration_ms=pr.duration_ms, output=pr.output,
                                           signal=pr.signal, timed_out=pr.timed_out)
        self.log.info("snapshot step %s: %s", " ".join(argv), pr.describe())
        if pr.output:
            self.log.info("snapshot output:\n%s", pr.output.rstrip("\n"))
        if pr.timed_out:
            self._deadline_reached()
        elif not pr.ok:
            self.error("SnapshotFailed", "snapshot step %s %s" % (argv[0], pr.describe()))
        else:
            self.snapshot_ok = True

    def _snapshot_callable(self, fn, deadline):
        box = {}

        def target():
            try:
                box["value"] = fn()
            except BaseException as exc:  # reported, not raised in a thread nobody joins
                box["error"] = exc

        name = getattr(fn, "__qualname__", None) or repr(fn)
        t = time.monotonic_ns()
        th = threading.Thread(target=target, name="vmsnap-snapshot", daemon=True)
        th.start()
        th.join(max(0.0, (deadline - time.monotonic_ns()) / 1e9))
        dur = round((time.monotonic_ns() - t) / 1e6, 3)
        snap = SnapshotResult(argv=["python:%s" % name], duration_ms=dur)
        self.res.snapshot = snap
        if th.is_alive():
            snap.timed_out = True
            self._deadline_reached()
        elif "error" in box:
            snap.exit_code = 1
            snap.output = "%s: %s" % (type(box["error"]).__name__, box["error"])
            self.error("SnapshotFailed", "snapshot callable %s raised %s" % (name, snap.output))
        else:
            snap.exit_code = 0
            value = box.get("value")
            snap.output = "" if value is None else str(value)[:SNAPSHOT_OUTPUT_LIMIT]
            self.snapshot_ok = True

    def _deadline_reached(self):
        if self.freeze_ok:
            self.error("FsFreezeTimeout", "the snapshot step was still running at the freeze "
                       "deadline (%gs): thawed and stopped" % self.plan.freeze_timeout)
        else:
            self.error("SnapshotFailed", "the snapshot step exceeded %gs and was stopped"
                       % self.plan.freeze_timeout)

    def finish_freeze(self):
        self.end_window()
        s = self.session
        fr = self.res.freeze
        if s is None:
            return
        fr.window_ms = s.window_ms
        fr.deadline_hit = s.deadline_hit
        fr.rcu_expedited = s.rcu_expedited
        fr.mounts = [m.to_dict() for m in s.mounts]
        if s.deadline_hit and self.freeze_ok and not self.res.has_error("FsFreezeTimeout"):
            self.error("FsFreezeTimeout", "the guardian thawed at the freeze deadline (%gs)"
                       % self.plan.freeze_timeout)
            self.snapshot_ok = False
        elif s.deadline_hit:
            self.snapshot_ok = False
        for m in s.mounts:
            if m.state == "thaw-failed":
                self.error("FsFreezeFailed", "%s: %s (run `vmsnap thaw`)" % (m.mountpoint, m.error))

    def run_post(self):
        if not self.pre_ran:
            return True
        chk = self.plan.post_check
        cfg = self.plan.config
        if not chk.ok:
            self.error(chk.problem.code, chk.problem.message)
            self.res.post_script = ScriptResult(path=chk.path, ran=False)
            return False
        t = time.monotonic_ns()
        sr, last, all_timed_out = run_script(chk, cfg.post_params, cfg.post_retries, cfg.timeout,
                                             log=self.log, watched=self.watched)
        self.phase("post-script", t)
        self.res.post_script = sr
        if sr.ok:
            return True
        self.script_failure("Post", chk.path, sr, last, all_timed_out)
        return False

    # -- the whole cycle -------------------------------------------------------
    def run(self) -> Result:
        try:
            return self._run()
        finally:
            # the run is over: what the scripts left running is theirs now
            for pgid in self.watched:
                unwatch_group(pgid)

    def _run(self) -> Result:
        plan, res, s = self.plan, self.res, self.plan.settings
        res.warnings.extend(plan.warnings)
        res.freeze = FreezeResult(enabled=s.fs_freeze_enabled)
        self.run_pre()
        hooks_ok = self.run_hooks("freeze")
        scripts_failed = self.pre_ok is False or not hooks_ok
        take = True
        if scripts_failed and not s.continue_on_failure and not plan.one_disk:
            take = False
            self.log.info("a script failed and continueBackupOnFailure is false: no snapshot")
        if take and s.fs_freeze_enabled:
            if plan.selection.eligible or plan.selection.missing:
                self.run_freeze()
            else:
                res.warnings.append("no filesystem to freeze")
            if self.freeze_failed and not (s.continue_on_failure or plan.one_disk):
                take = False
                self.log.info("a filesystem could not be frozen: no snapshot")
        try:
            if take:
                self.run_snapshot()
        finally:
            self.finish_freeze()
        self.run_hooks("thaw")
        post_ok = self.run_post()
        quiesced = self.pre_ok is True and hooks_ok or (self.pre_ok is None and hooks_ok
                                                         and bool(plan.hooks))
        if not self.snapshot_ok:
            res.consistency = None
            res.status = "failed"
        else:
            if self.freeze_ok:
                res.consistency = "application" if quiesced else "filesystem"
            elif self.freeze_failed:
                res.consistency = "crash"
            else:  # freeze disabled, or nothing to freeze
                res.consistency = "application" if quiesced else "crash"
            if self.quiesce_lost and res.consistency == "application":
                res.consistency = "filesystem" if self.freeze_ok else "crash"
            if not post_ok and not s.continue_on_failure:
                res.status = "failed"
            else:
                res.status = "degraded" if res.errors else "success"
        res.duration_ms = round((time.monotonic_ns() - self.t0) / 1e6, 3)
        return res


def _failed(code, message, t0) -> Result:
    res = Result(status="failed")
    res.error(code, message)
    res.duration_ms = round((time.monotonic_ns() - t0) / 1e6, 3)
    return res


def recover_stale(log: Logbook) -> list:
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


def run(config=None, snapshot=None, mounts=None, freeze_timeout=None, *, log_file=None,
        dry_run=False) -> Result:
    """The whole cycle of SPEC §1–§5; returns a Result (SPEC §7).

    config: a path, a Config, or None for $VMSNAP_CONFIG or the default path;
    snapshot: an argv list run while frozen, a callable run while frozen, or
    None for an empty step; mounts: the mount points to freeze (default: every
    eligible filesystem); freeze_timeout: seconds, overrides the config's
    freezeTimeoutInSeconds; log_file: where to append the run's log.
    """
    t0 = time.monotonic_ns()
    log = Logbook(log_file)
    try:
        try:
            core()
        except CoreUnavailable as exc:
            log.error("IncorrectPluginhostFile: %s", exc)
            return _failed("IncorrectPluginhostFile", str(exc), t0)
        lock = RunLock()
        try:
            if not dry_run:   # a dry run freezes and runs nothing: no lock, no root
                lock.acquire()
        except BusyError as exc:
            log.error("%s", exc)
            return _failed("AnotherRunInProgress", str(exc), t0)
        try:
            try:
                notes = [] if dry_run else recover_stale(log)
            except BusyError as exc:
                return _failed("AnotherRunInProgress", str(exc), t0)
            plan = make_plan(config, mounts, freeze_timeout)
            log.info("run: config %s, %d filesystem(s) to freeze, one disk: %s",
                     plan.config_path, len(plan.selection.eligible), plan.one_disk)
            if dry_run:
                res = dry_run_result(plan)
            else:
                res = Cycle(plan, snapshot, log).run()
            res.warnings[:0] = notes
            if log.open_error:
                res.warnings.append(log.open_error)
            log.info("result: status %s, consistency %s, window %s ms, errors %s",
                     res.status, res.consistency, res.freeze.window_ms,
                     ",".join(e.code for e in res.errors) or "none")
            return res
        finally:
            lock.release()
    finally:
        log.close()


def dry_run_result(plan: Plan) -> Result:
    """What a run would do, without running scripts, freezing or snapshotting."""
    res = Result(status="success")
    res.warnings.extend(plan.warnings)
    if plan.config_problem:
        res.error(*plan.config_problem)
    for chk in (plan.pre_check, plan.post_check):
        if chk is not None and not chk.ok:
            res.error(chk.problem.code, chk.problem.message)
    for p in plan.selection.missing:
        res.error("UnableToOpenMount", "%s: not a mount point" % p)
    res.freeze = FreezeResult(enabled=plan.settings.fs_freeze_enabled, mounts=[
        {"mountpoint": c.mount.mountpoint, "fstype": c.mount.fstype, "device": c.mount.device,
         "frozen": False, "freeze_ms": None, "thaw_ms": None, "error": None}
        for c in plan.selection.eligible])
    if res.errors:
        res.status = "degraded"
    return res
