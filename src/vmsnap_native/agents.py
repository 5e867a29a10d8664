"""vmsnap as the freeze hook of agents that already snapshot (SPEC §7, ``vmsnap hook``).

An agent calls ``vmsnap hook AGENT PHASE [ARG…]`` twice per snapshot: its
first phase runs the pre-script and the hooks' ``freeze``; its last phase
runs the hooks' ``thaw`` and the post-script.  Between the two calls the
session lives in RUNTIME_DIR/hook-AGENT.json (root-owned, 0600, written by
rename) and a watchdog process waits: if the last phase does not come within
freezeTimeoutInSeconds, the watchdog thaws what the agent froze and runs the
post-script itself, so no agent can leave a guest frozen behind vmsnap.

Who freezes: qemu-ga and VMware Tools freeze the filesystems themselves,
between our two calls.  The Google guest agent and AWS DLM freeze nothing,
so there vmsnap freezes on the first phase (held by the guardian with the
freeze timeout as its lease, like ``vmsnap freeze``) and thaws on the last.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import signal
import stat
import sys
import time
from dataclasses import dataclass, field

from . import cycle, hooks, scripts
from ._core import core
from .decide import QUIESCE_LOST_EXIT
from .errors import BusyError, Error, FreezeError
from .freeze import FreezeSession, runtime_dir, thaw_recorded
from .lock import RunLock
from .logbook import DEFAULT_LOG_FILE, Logbook
from .process import unwatch_group
from .result import FreezeResult, Result, ScriptResult

# How long the last phase waits for the watchdog to stand down and let go of the lock.
STAND_DOWN_WAIT_S = 10.0


# -- the agents -------------------------------------------------------------------

@dataclass(frozen=True)
class AgentSpec:
    """How one agent calls its hook, and what its exit statuses mean to it."""

    name: str
    first: str                       # the phase that begins a snapshot
    last: tuple                      # phases that end it
    failed_last: tuple = ()          # last phases that say the snapshot was not taken
    agent_freezes: bool = True       # False: vmsnap freezes on the first phase
    fold_case: bool = False          # phases match case-insensitively (VMware)
    checks: tuple = ()               # phases that only validate (DLM dry-run)
    codes: dict = field(default_factory=dict)   # outcome -> exit status

    def exit_status(self, outcome: str) -> int:
        default = {"ok": 0, "no-session": 0, "usage": 2}.get(outcome, 1)
        return self.codes.get(outcome, default)

    def phase(self, text: str) -> str:
        return text.lower() if self.fold_case else text


AGENTS = {
    # qga/commands-posix.c: the hook is exec'd with "freeze" before the agent
    # freezes (non-zero aborts the freeze, and no thaw follows) and "thaw"
    # after it thawed; stdio on /dev/null.
    "qemu-ga": AgentSpec("qemu-ga", "freeze", ("thaw",)),
    # open-vm-tools scriptOps.c: backupScripts.d/* run through a shell as
    # "path" freeze|freezeFail|thaw ["scriptArg"]; a failing freeze aborts the
    # quiesce and that script gets no freezeFail; freezeFail: quiesce failed.
    "vmware": AgentSpec("vmware", "freeze", ("thaw", "freezefail"), failed_last=("freezefail",),
                        fold_case=True),
    # google-guest-agent: /etc/google/snapshots/pre.sh and post.sh with one
    # argument, the disk list; exit 124 is reported as SCRIPT_TIMED_OUT.  The
    # agent freezes nothing itself.
    "gce": AgentSpec("gce", "pre", ("post",), agent_freezes=False,
                     codes={"pre-timeout": 124}),
    # AWS DLM: an SSM command document called with command=pre-script, then
    # post-script (dry-run validates); AWS's documented exit codes.
    "dlm": AgentSpec("dlm", "pre-script", ("post-script",), agent_freezes=False,
                     checks=("dry-run",),
                     codes={"pre-failed": 201, "pre-timeout": 201, "freeze-failed": 201,
                            "post-failed": 202, "expired": 203, "busy": 204,
                            "no-session": 205, "usage": 1, "problems": 206}),
}


def add_arguments(parser) -> None:
    """The ``vmsnap hook`` arguments (called by cli.build_parser)."""
    import argparse
    parser.add_argument("agent", metavar="AGENT", help="one of: %s" % ", ".join(AGENTS))
    parser.add_argument("--config", metavar="F", help="configuration file (default: "
                        "$VMSNAP_CONFIG or the Azure path)")
    parser.add_argument("--log-file", metavar="F",
                        help="log file (default %s; '' for none)" % DEFAULT_LOG_FILE)
    parser.add_argument("phase", metavar="PHASE", help="as the agent calls it")
    parser.add_argument("args", metavar="ARG", nargs=argparse.REMAINDER,
                        help="the agent's extra arguments (VMware scriptArg, GCE disk list)")


# -- the calls into the rest of vmsnap (kept in one place) -------------------------

def _make_plan(config):
    return cycle.make_plan(config)


def _recover_stale(log):
    cycle.recover_stale(log)


def _run_script(chk, params, retries, timeout, log, watched=None):
    return scripts.run_script(chk, params, retries, timeout, log=log, watched=watched)


def _discover_hooks(directory):
    return hooks.discover(directory)


def _run_hook(hook, action, retries, timeout, log, watched=None):
    return hooks.run_hook(hook, action, retries, timeout, log, watched)


# -- the session file ------------------------------------------------------------------

def session_path(agent: str) -> str:
    return os.path.join(runtime_dir(), "hook-%s.json" % agent)


def expired_path(agent: str) -> str:
    """What the watchdog left for a last phase that comes too late."""
    return os.path.join(runtime_dir(), "hook-%s.expired.json" % agent)


def write_atomically(path: str, data: dict) -> None:
    """Root-only 0600, written to a temporary file and renamed: never half a file."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = "%s.tmp-%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, json.dumps(data).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def read_trusted(path: str) -> dict:
    """A session file, if it is ours (owned by us, no group/other bits): it
    decides what gets thawed and which process gets signalled."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise ValueError("%s is not vmsnap's (owner uid %d, mode %o): ignored"
                             % (path, st.st_uid, st.st_mode & 0o777))
        with os.fdopen(os.dup(fd), "rb") as f:
            return json.loads(f.read())
    finally:
        os.close(fd)


def claim(path: str, who: str) -> str | None:
    """Takes the session for WHO by renaming it; only one claimant can win."""
    mine = "%s.%s-%d" % (path, who, os.getpid())
    try:
        os.rename(path, mine)
    except FileNotFoundError:
        return None
    return mine


def _starttime(pid: int) -> int:
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def _alive(pid, starttime) -> bool:
    return bool(pid) and bool(core()[1].vmsnap_process_matches(pid, starttime))


def _wait_gone(pid, starttime, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while _alive(pid, starttime):
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


# -- the steps, shared by the phases and the watchdog ---------------------------------

class Steps:
    """The pre-script, hooks and post-script of one session, recording into a Result."""

    def __init__(self, plan, log: Logbook, res: Result):
        self.plan, self.log, self.res = plan, log, res
        self.watched = []   # process groups the scripts left (lock sessions)
        self.post_refused = False   # the pre-script was not run: nothing could resume
        self.quiesce_lost = False   # a post-script or thaw hook said so (exit 10)

    def error(self, code, message):
        self.note(Error.of(code, message))

    def note(self, error: Error):
        self.res.add_error(error)
        self.log.error("%s: %s", error.code, error.message)

    def failure(self, tag, who, sr, last, all_timed_out):
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

    def pre(self) -> tuple:
        """Returns (ran, ok, timed_out); ok None when no scripts are configured."""
        plan, cfg = self.plan, self.plan.config
        if plan.config_problem:
            self.note(plan.config_problem)
        if plan.pre_check is None:
            return False, None, False
        if not plan.post_check.ok:   # no pre-script without a post-script to resume
            self.post_refused = True
            self.error(plan.post_check.problem.code, plan.post_check.problem.message)
            self.res.pre_script = ScriptResult(path=plan.pre_check.path, ran=False)
            return False, False, False
        if not plan.pre_check.ok:
            self.error(plan.pre_check.problem.code, plan.pre_check.problem.message)
            self.res.pre_script = ScriptResult(path=plan.pre_check.path, ran=False)
            return False, False, False
        sr, last, all_timed_out = _run_script(plan.pre_check, cfg.pre_params, cfg.pre_retries,
                                              cfg.timeout, self.log, self.watched)
        self.res.pre_script = sr
        if not sr.ok:
            self.failure("Pre", plan.pre_check.path, sr, last, all_timed_out)
        return True, sr.ok, all_timed_out

    def hooks_freeze(self) -> tuple:
        """Returns (paths of the hooks whose freeze was attempted, ok, timed_out)."""
        s = self.plan.settings
        begun, ok, timed_out = [], True, False
        for h in self.plan.hooks:
            run = _run_hook(h, "freeze", s.pre_retries, s.timeout, self.log, self.watched)
            self.res.hooks.append(run.to_dict())
            if run.problem:
                self.error(run.problem.code, run.problem.message)
                ok = False
                continue
            begun.append(h.path)
            if not run.result.ok:
                self.failure("Pre", "hook %s freeze" % h.name, run.result, run.last,
                             run.all_timed_out)
                ok, timed_out = False, timed_out or run.all_timed_out
        return begun, ok, timed_out

    def hooks_thaw(self, begun) -> bool:
        """Every hook whose freeze was attempted gets its thaw, in reverse order."""
        s = self.plan.settings
        known = {h.path: h for h in _discover_hooks(s.hooks_directory)}
        ok = True
        for path in reversed(begun):
            h = known.get(path) or hooks.Hook(os.path.basename(path), path)
            run = _run_hook(h, "thaw", s.post_retries, s.timeout, self.log)
            self.res.hooks.append(run.to_dict())
            if run.problem:
                self.error(run.problem.code, run.problem.message)
                ok = False
            elif not run.result.ok:
                self.failure("Post", "hook %s thaw" % h.name, run.result, run.last,
                             run.all_timed_out)
                ok = False
        return ok

    def post(self) -> bool:
        plan, cfg = self.plan, self.plan.config
        chk = plan.post_check
        if chk is None:
            return True
        if not chk.ok:
            self.error(chk.problem.code, chk.problem.message)
            self.res.post_script = ScriptResult(path=chk.path, ran=False)
            return False
        sr, last, all_timed_out = _run_script(chk, cfg.post_params, cfg.post_retries,
                                              cfg.timeout, self.log)
        self.res.post_script = sr
        if not sr.ok:
            self.failure("Post", chk.path, sr, last, all_timed_out)
        return sr.ok

    def release_groups(self):
        """What a successful pre-script left running (a lock session) must
        outlive this call: the post-script, in another call, releases it."""
        for pgid in self.watched:
            unwatch_group(pgid)
        self.watched = []


def finish(res: Result, snapshot_ok: bool, quiesced: bool, froze: bool) -> Result:
    if not snapshot_ok:
        res.status, res.consistency = "failed", None
    else:
        res.consistency = "application" if quiesced else ("filesystem" if froze else "crash")
        res.status = "degraded" if res.errors else "success"
    return res


def log_result(log: Logbook, agent: str, phase: str, res: Result) -> None:
    log.info("hook %s %s: status %s, consistency %s, errors %s", agent, phase, res.status,
             res.consistency, ",".join(e.code for e in res.errors) or "none")
    log.info("result %s", res.to_json(sort_keys=True))


def _on_devices(fd: int, devs) -> bool:
    """Whether FD is a regular file on one of DEVS (writing would block while frozen)."""
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_dev in devs


def say(lines) -> None:
    """Human text on stderr (the agents keep it in their own logs, or drop it)."""
    try:
        for line in lines:
            print(line, file=sys.stderr)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def summary(agent, phase, res: Result) -> list:
    head = "vmsnap hook %s %s: %s" % (agent, phase, res.status)
    if res.consistency:
        head += ", %s-consistent" % res.consistency
    lines = [head]
    lines += ["  warning: %s" % w for w in res.warnings]
    for e in res.errors:
        lines.append("  error %s (%d): %s" % (e.code, e.number, e.message))
        lines.append("        -> %s" % e.action)
    return lines


# -- thawing what the session froze -------------------------------------------------

def thaw_mount(path: str, dev: int) -> int:
    """FITHAW on PATH if it is still the filesystem DEV; 0 or -errno
    (-EINVAL: it was not frozen, -ESTALE: another filesystem is there now)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        return -exc.errno
    try:
        if os.fstat(fd).st_dev != dev:
            return -errno.ESTALE
        return core()[1].vmsnap_fithaw(fd)
    finally:
        os.close(fd)


def thaw_session(state: dict) -> list:
    """Thaws what the session's filesystems still have frozen; returns notes.
    Agent-frozen: FITHAW on each selected filesystem (still the same device)
    that is frozen.  vmsnap-frozen: the guardian is asked (or the record used)."""
    notes = []
    if state.get("vmsnap_froze"):
        for r in thaw_recorded():
            notes.append("%s: %s" % (r.mountpoint, r.outcome))
        return notes
    for m in state.get("selection", []):
        r = thaw_mount(m["mountpoint"], m["dev"])
        if r == 0:
            notes.append("%s: thawed" % m["mountpoint"])
        elif r not in (-errno.EINVAL, -errno.ESTALE, -errno.ENOENT):
            notes.append("%s: thaw failed: %s" % (m["mountpoint"], os.strerror(-r)))
    return notes


# -- the first phase ------------------------------------------------------------------------

class HookCall:
    """One call of ``vmsnap hook``."""

    def __init__(self, spec: AgentSpec, phase: str, args, config, log_file):
        self.spec, self.phase, self.args = spec, phase, list(args)
        self.config = config
        self.log_file = log_file
        self.path = session_path(spec.name)

    def logbook(self) -> Logbook:
        return Logbook(self.log_file or None)

    # ---- first phase
    def begin(self) -> int:
        log = self.logbook()
        lock = RunLock()
        try:
            try:
                lock.acquire()
            except BusyError as exc:
                if not self._supersede(log):
                    return self._refuse(log, str(exc))
                try:
                    lock.acquire()
                except BusyError as exc2:
                    return self._refuse(log, str(exc2))
            try:
                _recover_stale(log)
            except BusyError as exc:
                return self._refuse(log, str(exc))
            return self._begin(log, lock)
        finally:
            lock.release()
            log.close()

    def _refuse(self, log, why) -> int:
        res = Result(status="failed")
        res.add_error(Error.of("AnotherRunInProgress", why))
        log_result(log, self.spec.name, self.phase, res)
        say(summary(self.spec.name, self.phase, res))
        return self.spec.exit_status("busy")

    def _supersede(self, log) -> bool:
        """A first phase while this agent's session is still open: the agent
        restarted (qemu-ga and vmtoolsd lose their frozen state when they do)
        or gave up on the last one.  That session is ended first, as its
        watchdog would; DLM says 204 instead, as AWS documents."""
        try:
            state = read_trusted(self.path)
        except (OSError, ValueError):
            return False
        wd = state.get("watchdog") or {}
        if self.spec.name == "dlm" and _alive(wd.get("pid"), wd.get("starttime")) and \
                time.time() < state.get("deadline_wall", 0):
            return False
        mine = claim(self.path, "superseded")
        if mine is None:
            return False
        if _alive(wd.get("pid"), wd.get("starttime")):
            os.kill(wd["pid"], signal.SIGUSR1)   # it finds the session gone and exits
            _wait_gone(wd["pid"], wd["starttime"], STAND_DOWN_WAIT_S)
        expire(self.spec, state, mine, "a new `%s` came before the `%s` of the previous "
               "snapshot (begun %s)" % (self.phase, self.spec.last[0],
                                        state.get("begun_at")), log)
        return True

    def _begin(self, log, lock) -> int:
        spec = self.spec
        plan = _make_plan(self.config)
        res = Result()
        res.warnings.extend(plan.warnings)
        res.freeze = FreezeResult(enabled=plan.settings.fs_freeze_enabled)
        log.info("hook %s: config %s", " ".join([spec.name, self.phase] + self.args),
                 plan.config_path)
        steps = Steps(plan, log, res)
        pre_ran, pre_ok, pre_timed_out = steps.pre()
        begun, hooks_ok, hooks_timed_out = steps.hooks_freeze()
        s = plan.settings
        selection = self._selection(plan, res)
        one_disk = plan.one_disk
        for p in plan.selection.missing:
            steps.error("UnableToOpenMount", "%s: not a mount point" % p)
        # a refused post-script skips the pre-script without failing the snapshot (SPEC §5)
        scripts_failed = (pre_ok is False and not steps.post_refused) or not hooks_ok
        if scripts_failed and not s.continue_on_failure and not one_disk:
            log.info("a script failed and continueBackupOnFailure is false: the %s "
                     "snapshot is aborted" % spec.name)
            outcome = "pre-timeout" if (pre_timed_out or hooks_timed_out) else "pre-failed"
            return self._abort(steps, begun, pre_ran, outcome)
        state = {
            "agent": spec.name, "phase": self.phase, "args": self.args,
            "config": plan.config_path, "log_file": self.log_file,
            "begun_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "pre_ran": pre_ran, "pre_ok": pre_ok, "hooks_ok": hooks_ok, "hooks_begun": begun,
            "selection": selection, "vmsnap_froze": False, "freeze_timeout": plan.freeze_timeout,
        }
        if not spec.agent_freezes and s.fs_freeze_enabled and selection:
            failed = self._freeze(plan, selection, state, res, log)
            if failed:   # everything is thawed again: the log can be written
                log = steps.log = self.logbook()
                if not (s.continue_on_failure or one_disk):
                    return self._abort(steps, begun, pre_ran, "freeze-failed")
        state["deadline_wall"] = time.time() + plan.freeze_timeout
        state["deadline_ns"] = time.monotonic_ns() + int(plan.freeze_timeout * 1e9)
        state["result"] = res.to_dict()
        try:   # a note about an earlier session's end is for that session's agent only
            os.unlink(expired_path(spec.name))
        except FileNotFoundError:
            pass
        write_atomically(self.path, state)
        pid = start_watchdog(spec, self.path, state["deadline_ns"], lock)
        state["watchdog"] = {"pid": pid, "starttime": _starttime(pid)}
        write_atomically(self.path, state)
        steps.release_groups()
        if not state["vmsnap_froze"]:   # nothing of ours is frozen: the log can be written
            log.info("hook %s %s: session open until `%s` or %gs (watchdog pid %d)",
                     spec.name, self.phase, spec.last[0], plan.freeze_timeout, pid)
        if state["vmsnap_froze"] and _on_devices(2, {m["dev"] for m in selection}):
            return spec.exit_status("ok")   # stderr is a file we froze: say nothing
        say(["vmsnap hook %s %s: pre-script %s; %s; the watchdog ends it in %gs if `%s` "
             "never comes" % (spec.name, self.phase,
                              {None: "not configured", True: "ok", False: "failed"}[pre_ok],
                              "%d filesystem(s) frozen by vmsnap" % len(selection)
                              if state["vmsnap_froze"] else "the agent freezes now",
                              plan.freeze_timeout, spec.last[0])]
            + ["  error %s: %s" % (e.code, e.message) for e in res.errors])
        return spec.exit_status("ok")

    def _selection(self, plan, res) -> list:
        """The filesystems of the session: the config's selection.  Where vmsnap
        freezes for the agent, the filesystems the agent itself needs to
        deliver the last phase (/, /usr, /var, vmsnap's own) are left out."""
        keep_out = {}
        if not self.spec.agent_freezes:
            for p in ("/", "/usr", "/var", sys.prefix, runtime_dir()):
                try:
                    keep_out.setdefault(os.stat(p).st_dev, p)
                except OSError:
                    pass
        out = []
        for c in plan.selection.eligible:
            try:
                dev = os.stat(c.mount.mountpoint).st_dev
            except OSError:
                continue
            if dev in keep_out:
                res.warnings.append("%s not frozen: it holds %s, which the %s agent needs to "
                                    "call the last phase" % (c.mount.mountpoint, keep_out[dev],
                                                             self.spec.name))
                continue
            out.append({"mountpoint": c.mount.mountpoint, "dev": dev,
                        "device": c.mount.device, "fstype": c.mount.fstype})
        return out

    def _freeze(self, plan, selection, state, res, log) -> bool:
        """Freezes the selection and hands it to the guardian; True if it failed."""
        log.info("freezing %d filesystem(s) for %s; lease %gs", len(selection), self.spec.name,
                 plan.freeze_timeout)
        log.close()   # nothing is written to a file from here on: it may be frozen
        try:
            session = FreezeSession([m["mountpoint"] for m in selection],
                                    timeout=plan.freeze_timeout,
                                    expedite_rcu=plan.settings.expedite_rcu,
                                    dirty_cap_mb=plan.settings.dirty_cap_mib)
            session.freeze()
        except (OSError, FreezeError) as exc:
            res.add_error(Error.of("FsFreezeFailed", str(exc)))
            return True
        res.freeze.mounts = [m.to_dict() for m in session.mounts]
        res.freeze.window_ms = None
        if not session.all_frozen:
            session.thaw()
            res.freeze.mounts = [m.to_dict() for m in session.mounts]
            for m in session.failures:
                res.add_error(Error.of("FsFreezeFailed", "%s: %s" % (m.mountpoint,
                                                                      m.error or m.state)))
            return True
        state.update(vmsnap_froze=True, record=session.record_path,
                     guardian={"pid": session.guardian_pid,
                               "starttime": _starttime(session.guardian_pid)},
                     first_freeze_ns=session.first_freeze_ns)
        session.detach()
        return False

    def _abort(self, steps, begun, pre_ran, outcome) -> int:
        """The snapshot will not happen: no last phase follows, so the thaw
        hooks and the post-script run now."""
        log = steps.log
        steps.hooks_thaw(begun)
        if pre_ran:
            steps.post()
        steps.release_groups()
        res = finish(steps.res, False, False, False)
        log_result(log, self.spec.name, self.phase, res)
        say(summary(self.spec.name, self.phase, res))
        log.close()
        return self.spec.exit_status(outcome)

    # ---- last phase
    def end(self) -> int:
        spec = self.spec
        mine = claim(self.path, "ending")
        if mine is None:
            return self._no_session()
        try:
            state = read_trusted(mine)
        except (OSError, ValueError) as exc:
            say(["vmsnap hook %s %s: unreadable session %s: %s" % (spec.name, self.phase,
                                                                      mine, exc)])
            return spec.exit_status("no-session")
        # thaw first: nothing else (no log, no lock file) before the filesystems are back
        guardian = state.get("guardian") or {}
        thawed_early = state.get("vmsnap_froze") and not _alive(guardian.get("pid"),
                                                                 guardian.get("starttime"))
        notes = thaw_session(state) if state.get("vmsnap_froze") else []
        wd = state.get("watchdog") or {}
        if _alive(wd.get("pid"), wd.get("starttime")):
            os.kill(wd["pid"], signal.SIGUSR1)
            _wait_gone(wd["pid"], wd["starttime"], STAND_DOWN_WAIT_S)
        log = self.logbook()
        lock = RunLock()
        for _ in range(50):
            try:
                lock.acquire()
                break
            except BusyError:
                time.sleep(0.1)
        try:
            return self._end(state, log, notes, thawed_early)
        finally:
            lock.release()
            log.close()
            try:
                os.unlink(mine)
            except OSError:
                pass

    def _end(self, state, log, notes, thawed_early) -> int:
        spec = self.spec
        plan = _make_plan(state.get("config"))
        res = restore_result(state.get("result") or {})
        for n in notes:
            log.info("thaw: %s", n)
        steps = Steps(plan, log, res)
        failed_snapshot = self.phase in spec.failed_last
        if failed_snapshot:
            res.warnings.append("%s says the snapshot failed (%s)" % (spec.name, self.phase))
        if thawed_early:
            steps.error("FsFreezeTimeout", "the filesystems vmsnap froze for %s were thawed "
                        "before `%s` came (the %gs lease ran out, or `vmsnap thaw`)"
                        % (spec.name, self.phase, state.get("freeze_timeout", 0)))
        hooks_ok = steps.hooks_thaw(state.get("hooks_begun", []))
        post_ok = steps.post() if state.get("pre_ran") else True
        quiesced = state.get("pre_ok") is True and state.get("hooks_ok", True) or (
            state.get("pre_ok") is None and bool(state.get("hooks_begun"))
            and state.get("hooks_ok", True))
        froze = spec.agent_freezes or state.get("vmsnap_froze")
        finish(res, not (failed_snapshot or thawed_early), quiesced and not steps.quiesce_lost,
               bool(froze))
        if not (post_ok and hooks_ok) and not plan.settings.continue_on_failure:
            res.status = "failed"
        log_result(log, spec.name, self.phase, res)
        say(summary(spec.name, self.phase, res))
        if thawed_early:
            return spec.exit_status("expired")
        if not post_ok or not hooks_ok:
            return spec.exit_status("post-failed")
        return spec.exit_status("ok")

    def _no_session(self) -> int:
        spec = self.spec
        late = expired_path(spec.name)
        try:
            gone = read_trusted(late)
            os.unlink(late)
        except (OSError, ValueError):
            gone = None
            for claimed in glob.glob(glob.escape(self.path) + ".expiring-*"):
                try:   # the watchdog is ending it right now
                    gone = read_trusted(claimed)
                except (OSError, ValueError):
                    pass
        log = self.logbook()
        try:
            if gone is not None:
                msg = ("`%s` came after the watchdog had ended the snapshot begun %s at its "
                       "%gs deadline (thawed, post-script run): this snapshot is not "
                       "consistent" % (self.phase, gone.get("begun_at"),
                                       gone.get("freeze_timeout", 0)))
                log.error("hook %s: %s", spec.name, msg)
                say(["vmsnap hook %s %s: %s" % (spec.name, self.phase, msg)])
                return spec.exit_status("expired")
            log.info("hook %s %s: no open session (nothing began, or the first phase "
                     "already ran the post-script when it aborted): nothing to do",
                     spec.name, self.phase)
            say(["vmsnap hook %s %s: no open session, nothing to do" % (spec.name, self.phase)])
            return spec.exit_status("no-session")
        finally:
            log.close()

    # ---- dry run (DLM)
    def check(self) -> int:
        plan = _make_plan(self.config)
        problems = []
        if plan.config_problem:
            problems.append("%s: %s" % (plan.config_problem.code, plan.config_problem.message))
        for chk in (plan.pre_check, plan.post_check):
            if chk is not None and not chk.ok:
                problems.append("%s: %s" % (chk.problem.code, chk.problem.message))
        say(["vmsnap hook %s %s: %s" % (self.spec.name, self.phase,
                                         "ready" if not problems else "not ready")]
            + ["  %s" % p for p in problems])
        return self.spec.exit_status("problems" if problems else "ok")


def restore_result(d: dict) -> Result:
    res = Result()
    for e in d.get("errors", []):
        res.add_error(Error.of(e["code"], e["message"]))
    res.warnings = list(d.get("warnings", []))
    if d.get("pre_script"):
        res.pre_script = ScriptResult(**d["pre_script"])
    res.hooks = list(d.get("hooks", []))
    if d.get("freeze"):
        res.freeze = FreezeResult(**d["freeze"])
    return res


# -- the watchdog ------------------------------------------------------------------------------

def expire(spec: AgentSpec, state: dict, claimed: str, reason: str, log: Logbook | None = None):
    """Ends a session whose last phase did not come: thaws, then thaw hooks
    and post-script; leaves a note for a last phase that comes too late."""
    notes = thaw_session(state)        # before anything is written anywhere
    # at once, so that a last phase arriving from now on is told it came too late
    write_atomically(expired_path(spec.name), {
        "begun_at": state.get("begun_at"), "freeze_timeout": state.get("freeze_timeout"),
        "reason": reason})
    own_log = log is None
    if own_log:
        log = Logbook(state.get("log_file") or None)
    try:
        for n in notes:
            log.info("thaw: %s", n)
        plan = _make_plan(state.get("config"))
        res = restore_result(state.get("result") or {})
        steps = Steps(plan, log, res)
        steps.error("FsFreezeTimeout", "%s; vmsnap thawed what %s froze and ran the "
                    "post-script itself" % (reason, spec.name))
        steps.hooks_thaw(state.get("hooks_begun", []))
        if state.get("pre_ran"):
            steps.post()
        finish(res, False, False, False)
        log_result(log, spec.name, "watchdog", res)
    finally:
        if own_log:
            log.close()
        try:
            os.unlink(claimed)
        except OSError:
            pass
    return res


def start_watchdog(spec: AgentSpec, path: str, deadline_ns: int, lock: RunLock) -> int:
    """Forks the watchdog: a new session, stdio on /dev/null, no fd but the
    run lock (held for the session, so no other run starts meanwhile)."""
    wanted = {signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, wanted)   # no signal lost before it waits
    pid = os.fork()
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        return pid
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        keep = lock._fd
        os.closerange(3, keep)
        os.closerange(keep + 1, 65536)
        os.chdir("/")
        os.umask(0o077)
        sys.dont_write_bytecode = True   # nothing on disk while filesystems are frozen
        os.ftruncate(keep, 0)   # the lock now names its holder: this watchdog
        os.pwrite(keep, b"%d\n" % os.getpid(), 0)
        watchdog(spec, path, deadline_ns)
    except BaseException:
        pass
    os._exit(0)


def watchdog(spec: AgentSpec, path: str, deadline_ns: int) -> None:
    """Waits for the deadline, the last phase (SIGUSR1, with the session gone),
    or a request to stop (SIGTERM/SIGINT/SIGHUP: then it ends the session now)."""
    wanted = {signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)   # kept blocked: spawned scripts reset it
    reason = None
    while reason is None:
        left = (deadline_ns - time.monotonic_ns()) / 1e9
        if left <= 0:
            break
        info = signal.sigtimedwait(wanted, left)
        if info is None:
            break
        if info.si_signo == signal.SIGUSR1:
            if not os.path.exists(path):
                return   # the last phase took the session
            continue
        reason = "the watchdog was asked to stop (%s)" % signal.Signals(info.si_signo).name
    mine = claim(path, "expiring")
    if mine is None:
        return
    try:
        state = read_trusted(mine)
    except (OSError, ValueError):
        return
    if reason is None:
        reason = "`%s` did not come within freezeTimeoutInSeconds (%gs)" % (
            spec.last[0], state.get("freeze_timeout", 0))
    expire(spec, state, mine, reason)


# -- entry point -----------------------------------------------------------------------

def main(args) -> int:
    """``vmsnap hook AGENT [--config F] PHASE [ARG…]``; returns the exit status the agent expects."""
    spec = AGENTS.get(args.agent)
    if spec is None:
        say(["vmsnap hook: unknown agent %r; known: %s" % (args.agent, ", ".join(AGENTS))])
        return 2
    if os.geteuid() != 0:
        say(["vmsnap hook %s needs root: it runs root's scripts" % spec.name])
        return spec.exit_status("usage")
    misplaced = [a for a in args.args if a.split("=", 1)[0] in ("--config", "--log-file")]
    if misplaced:
        say(["vmsnap hook %s: %s must come before PHASE (vmsnap hook %s %s PHASE …)"
             % (spec.name, misplaced[0], spec.name, misplaced[0])])
        return spec.exit_status("usage")
    phase = spec.phase(args.phase)
    log_file = args.log_file if args.log_file is not None else DEFAULT_LOG_FILE
    call = HookCall(spec, phase, args.args, args.config, log_file)
    if phase == spec.phase(spec.first):
        return call.begin()
    if phase in spec.last:
        return call.end()
    if phase in spec.checks:
        return call.check()
    say(["vmsnap hook %s: unknown phase %r; %s calls its hook with: %s"
         % (spec.name, args.phase, spec.name,
            ", ".join((spec.first,) + spec.last + spec.checks))])
    return spec.exit_status("usage")
