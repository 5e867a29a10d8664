"""What a run would do, worked out before anything runs: the configuration
read and checked, the scripts and hooks checked by the policy, the mounts
selected.  ``Plan.problems()`` is the one list of what is wrong (for `check`),
``expected_outcome()`` what a run would record if every script worked (for
the dry run), and ``describe_plan()`` says it in words."""

from __future__ import annotations

import os
from collections.abc import Iterable

from . import disks, mountinfo, policy
from ._record import Record
from .config import Config, config_path, parse_config, read_config_file, selection_settings
from .errors import CONFIG_INVALID, UNABLE_TO_OPEN_MOUNT, ConfigError, Error

# hooks (and through them the scripts' machinery), metrics, result and the
# decision are imported where they are used: `vmsnap mounts` needs none of them.
TYPE_CHECKING = False   # true for type checkers; `typing` is not imported for it
if TYPE_CHECKING:
    from typing import Any

    from . import decide
    from .hooks import Hook
    from .result import Result


class Plan(Record):
    """What a run would do, worked out before anything runs."""

    __slots__ = ("config_path", "config", "settings", "config_problem", "pre_check",
                 "post_check", "selection", "one_disk", "selection_source", "freeze_timeout",
                 "hooks", "warnings")
    config_path: str | None
    config: Config | None                 # a valid, well-permitted configuration
    settings: Config                      # config or defaults: freeze and policy settings
    config_problem: Error | None          # 305 or 317: the configuration is not used
    pre_check: policy.ScriptCheck | None
    post_check: policy.ScriptCheck | None
    selection: mountinfo.Selection
    one_disk: bool
    selection_source: str                 # "mountsToFreeze" or --mount: what names the mounts
    freeze_timeout: float
    hooks: list[Hook]
    warnings: list[str]

    def __init__(self, config_path: str | None, config: Config | None, settings: Config,
                 config_problem: Error | None = None,
                 pre_check: policy.ScriptCheck | None = None,
                 post_check: policy.ScriptCheck | None = None,
                 selection: mountinfo.Selection | None = None, one_disk: bool = True,
                 selection_source: str = "mountsToFreeze", freeze_timeout: float = 60.0,
                 hooks: list[Hook] | None = None, warnings: list[str] | None = None) -> None:
        self.config_path = config_path
        self.config = config
        self.settings = settings
        self.config_problem = config_problem
        self.pre_check = pre_check
        self.post_check = post_check
        self.selection = mountinfo.Selection() if selection is None else selection
        self.one_disk = one_disk
        self.selection_source = selection_source
        self.freeze_timeout = freeze_timeout
        self.hooks = [] if hooks is None else hooks
        self.warnings = [] if warnings is None else warnings

    @property
    def decision_settings(self) -> decide.Settings:
        from . import decide
        return decide.Settings(continue_on_failure=self.settings.continue_on_failure,
                               freeze_timeout=self.freeze_timeout,
                               script_timeout=self.settings.timeout)

    def hook_checks(self) -> list[tuple[Hook, policy.ScriptCheck]]:
        """(hook, its policy check) for each hook; checked as its freeze call runs it."""
        return [(h, policy.check_hook(h.path, "pre")) for h in self.hooks]

    def problems(self) -> list[Error]:
        """Every problem the checks find, as Errors (what `check` prints)."""
        out = [self.config_problem] if self.config_problem else []
        checks = [(chk, "") for chk in (self.pre_check, self.post_check) if chk is not None]
        checks += [(chk, "hook %s: " % h.name) for h, chk in self.hook_checks()]
        for chk, prefix in checks:
            # refused; or it runs but will likely fail (Windows line endings, say)
            found = [chk.problem] if chk.problem is not None else chk.check_problems
            out += [problem_error(p, prefix) for p in found]
        out += missing_mount_errors(self)
        out += self._metrics_errors()
        return out

    def _metrics_errors(self) -> list[Error]:
        """The configuration's metricsFile as `check` sees it: what stops a run
        from writing it is a problem; who else can write there, a warning."""
        path = self.settings.metrics_file
        if not path:
            return []
        from . import metrics
        found, notes = metrics.check_path(path)
        self.warnings.extend(n for n in notes if n not in self.warnings)
        return [CONFIG_INVALID.error("%s: metricsFile: %s" % (self.config_path, p))
                for p in found]


def problem_error(problem: policy.Problem, prefix: str = "") -> Error:
    """The policy's finding as the one error shape (the boundary with policy.py)."""
    return Error.of(problem.code, prefix + problem.message)


def missing_mount_errors(plan: Plan) -> list[Error]:
    """A selection that names what is no mount point (--mount, mountsToFreeze):
    found before anything runs, and nothing runs (a mistyped mount must never
    become a quiet, unfrozen snapshot)."""
    return [UNABLE_TO_OPEN_MOUNT.error(
        "%s: not a mount point (named by %s): nothing runs while the selection names it "
        "(no script, no freeze, no snapshot)" % (p, plan.selection_source))
        for p in plan.selection.missing]


def _read_config(config: str | os.PathLike[str] | Config | None, warnings: list[str]
                 ) -> tuple[str | None, Config | None, Error | None, Config | None]:
    """(path, Config or None, problem Error or None, settings) for CONFIG (a
    path, a Config, or None).  SETTINGS is what a run goes by: the Config; the
    defaults when there is no file; when the file cannot be used (305, 317),
    the defaults with the file's selection fields that are valid on their
    own; None when not even those can be read (what the file excludes is
    unknown)."""
    if isinstance(config, Config):
        return config.path, config, None, config
    path = config_path(os.fspath(config) if config is not None else None)
    try:
        got = read_config_file(path)
    except ConfigError as exc:
        return path, None, exc.error(), None
    if got is None:
        warnings.append("no configuration file at %s: no scripts run; the best result is "
                        "filesystem-consistent" % path)
        return path, None, None, Config()
    data, st = got
    perm = policy.check_config_stat(st, path)
    if perm:
        # the file's own selection still holds; its metricsFile does not (anyone who can
        # write the file could point root's write anywhere)
        return path, None, problem_error(perm), _selection(data, path, warnings)
    try:
        cfg = parse_config(data, path)
    except ConfigError as exc:
        return path, None, exc.error(), _selection(data, path, warnings, also=("metricsFile",))
    return path, cfg, None, cfg


def _selection(data: bytes, path: str, warnings: list[str],
               also: tuple[str, ...] = ()) -> Config | None:
    settings, why = selection_settings(data, path, also)
    if settings is None:
        warnings.append("what to freeze cannot be read from the configuration (%s)" % why)
    return settings


UNREADABLE_SELECTION = ("not selected: the configuration cannot be read, so only mounts "
                        "named with --mount are frozen")


def make_plan(config: str | os.PathLike[str] | Config | None = None,
              mounts: str | Iterable[str] | None = None,
              freeze_timeout: float | None = None, *, with_hooks: bool = True) -> Plan:
    """Reads the configuration, checks permissions and scripts, selects mounts
    (and finds the hooks, unless not WITH_HOOKS: `vmsnap mounts` shows none)."""
    # once, as a list: a generator read twice would select nothing the second time
    mounts = [mounts] if isinstance(mounts, str) else list(mounts or ()) or None
    warnings: list[str] = []
    path, cfg, problem, settings = _read_config(config, warnings)
    selection_known = settings is not None
    if settings is None:
        settings = Config()
    if problem:
        warnings.append("configuration not used (%s): scripts skipped; %s" % (
            problem.code, "its fsFreezeEnabled, mountsToSkip and mountsToFreeze still apply, "
            "other settings take their defaults" if selection_known else
            "nothing is frozen except mounts named with --mount (%s)"
            % (", ".join(mounts) if mounts else "none were")))
    if cfg is not None:
        warnings.extend(cfg.warnings)
    plan = Plan(config_path=path, config=cfg, settings=settings, config_problem=problem,
                warnings=warnings)
    plan.freeze_timeout = float(freeze_timeout or settings.freeze_timeout)
    if mounts:
        plan.selection_source = "--mount"
    if cfg is not None and cfg.pre_script is not None:
        plan.pre_check = policy.check_script(cfg.pre_script, "pre")
        plan.post_check = policy.check_script(cfg.post_script or "", "post")
    only = list(mounts) if mounts else settings.mounts_to_freeze
    if not selection_known and not mounts:
        only = []   # a configuration never widens the freeze
    plan.selection = mountinfo.discover(
        only=only, skip=settings.mounts_to_skip,
        unselected=None if selection_known or mounts else UNREADABLE_SELECTION)
    if mounts:
        named = {os.path.normpath(m) for m in mounts}
        for c in plan.selection.skipped:
            if c.mount.mountpoint in named:
                warnings.append("%s not frozen: %s" % (c.mount.mountpoint, c.reason))
    plan.one_disk = disks.single_disk([c.mount for c in plan.selection.eligible]) \
        if plan.selection.eligible else True
    if cfg is not None and with_hooks:
        from . import hooks
        plan.hooks = hooks.discover(settings.hooks_directory)
    return plan


# -- what a run would record -------------------------------------------------------

def script_facts(plan: Plan) -> tuple[decide.StepFact, decide.StepFact]:
    from . import decide
    """The pre- and post-script's facts known before anything runs: refused by
    the checks, or withheld (the pre-script runs only if the post-script can:
    nothing else would resume the application)."""
    if plan.pre_check is None:
        return decide.StepFact("pre"), decide.StepFact("post", decide.NOT_NEEDED)
    pre, post = plan.pre_check, plan.post_check
    assert post is not None   # make_plan checks both scripts or neither
    if pre.problem is not None:   # refused
        return (decide.StepFact("pre", decide.REFUSED, pre.path, problem=problem_error(pre.problem)),
                decide.StepFact("post", decide.NOT_NEEDED, post.path))
    if post.problem is not None:
        return (decide.StepFact("pre", decide.WITHHELD, pre.path),
                decide.StepFact("post", decide.REFUSED, post.path,
                                problem=problem_error(post.problem)))
    return decide.StepFact("pre", decide.OK, pre.path), decide.StepFact("post", decide.OK, post.path)


def withheld_warning(plan: Plan) -> str:
    pre, post = plan.pre_check, plan.post_check
    assert pre is not None and post is not None and post.problem is not None   # withheld
    return ("pre-script %s not run: the post-script cannot run (%s), and nothing else would "
            "resume the application" % (pre.path, post.problem.code))


def expected_outcome(plan: Plan) -> decide.Outcome:
    """The facts a run would record if every script, hook and the snapshot
    step worked: what the checks already know, the rest assumed fine."""
    from . import decide
    o = decide.Outcome(config_error=plan.config_problem, one_disk=plan.one_disk,
                       hooks_configured=bool(plan.hooks))
    if plan.selection.missing:   # found before anything runs: nothing does
        o.freeze = decide.NOT_ATTEMPTED
        o.freeze_errors = missing_mount_errors(plan)
        return o
    o.pre, o.post = script_facts(plan)
    for h, chk in plan.hook_checks():
        o.hook_freeze.append(decide.StepFact("pre", decide.OK, h.name) if chk.problem is None else decide.StepFact(
            "pre", decide.REFUSED, h.name, problem=problem_error(chk.problem, "hook %s: " % h.name)))
    s = plan.decision_settings
    if not decide.take_snapshot(o, s):
        o.freeze = decide.NOT_ATTEMPTED
        return o
    if not plan.settings.fs_freeze_enabled:
        o.freeze = decide.DISABLED
    else:
        o.freeze = decide.FROZEN if plan.selection.eligible else decide.NOTHING
    if decide.take_snapshot(o, s):
        o.snapshot = decide.TAKEN
    return o


def describe_plan(plan: Plan, outcome: decide.Outcome,
                  verdict: decide.Verdict) -> dict[str, Any]:
    """What a run would do, as data (the dry run's ``plan``; printed in words by the CLI)."""
    from . import decide
    cfg = plan.config
    takes = outcome.snapshot == decide.TAKEN
    missing = ("%s named by %s is not a mount point: nothing runs"
               % (", ".join(plan.selection.missing), plan.selection_source)
               if plan.selection.missing else None)

    def script(chk: policy.ScriptCheck | None, fact: decide.StepFact, params: list[str],
               retries: int) -> dict[str, Any] | None:
        if chk is None:
            return None
        d = {"path": chk.path, "runs": fact.state in (decide.OK,) and not missing,
             "runs_as": list(chk.argv_prefix) + list(params) if chk.ok else None,
             "attempts": retries + 1, "timeout_s": plan.settings.timeout}
        if missing:
            d["why_not"] = missing
        elif fact.state == decide.REFUSED:
            assert fact.problem is not None   # a refusal says why
            d["why_not"] = fact.problem.message
        elif fact.state == decide.WITHHELD:
            assert plan.post_check is not None and plan.post_check.problem is not None
            d["why_not"] = ("the post-script cannot run (%s): nothing else would resume the "
                            "application" % plan.post_check.problem.code)
        elif fact.state == decide.NOT_NEEDED:
            d["why_not"] = "the pre-script does not run: nothing to resume"
        return d

    return {
        "config": plan.config_path,
        "pre_script": script(plan.pre_check, outcome.pre, cfg.pre_params if cfg else [],
                             plan.settings.pre_retries),
        "hooks": [{"name": h.name, "path": h.path, "runs": chk.ok and not missing,
                   "why_not": missing or (None if chk.problem is None else chk.problem.message)}
                  for h, chk in plan.hook_checks()],
        "freeze": {"enabled": plan.settings.fs_freeze_enabled, "timeout_s": plan.freeze_timeout,
                   "mounts": [c.mount.mountpoint for c in plan.selection.eligible]
                   if outcome.freeze in (decide.FROZEN, decide.FREEZE_FAILED) else [],
                   "problems": [e.message for e in outcome.freeze_errors]},
        "snapshot": takes,
        "snapshot_why_not": None if takes else (missing or "a script or the freeze failed and "
                                                "continueBackupOnFailure is false (several disks)"),
        "post_script": script(plan.post_check, outcome.post, cfg.post_params if cfg else [],
                              plan.settings.post_retries),
        "one_disk": plan.one_disk,
        "continue_on_failure": plan.settings.continue_on_failure,
        "expected_consistency": verdict.consistency,
    }


def dry_run_result(plan: Plan) -> Result:
    """What a run would do, without running scripts, freezing or snapshotting:
    the verdict a run would reach if every script and the snapshot step worked
    (so continueBackupOnFailure: false fails it as the run would), and the plan."""
    from . import decide
    from .result import FreezeResult, Result
    outcome = expected_outcome(plan)
    verdict = decide.decide(outcome, plan.decision_settings)
    res = Result(status=verdict.status, errors=list(verdict.errors))
    res.warnings.extend(plan.warnings)
    if outcome.pre.state == decide.WITHHELD:
        res.warnings.append(withheld_warning(plan))
    res.plan = describe_plan(plan, outcome, verdict)
    res.freeze = FreezeResult(enabled=plan.settings.fs_freeze_enabled, mounts=[
        {"mountpoint": c.mount.mountpoint, "fstype": c.mount.fstype, "device": c.mount.device,
         "frozen": False, "freeze_ms": None, "thaw_ms": None, "error": None}
        for c in plan.selection.eligible])
    return res
