"""What a run would do, worked out before anything runs: the configuration
read and checked, the scripts and hooks checked by the policy, the mounts
selected.  ``Plan.problems()`` is the one list of what is wrong (for `check`),
``expected_outcome()`` what a run would record if every script worked (for
the dry run), and ``describe_plan()`` says it in words."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import decide, disks, hooks, mountinfo, policy
from .config import Config, config_path, parse_config, read_config_file
from .errors import UNABLE_TO_OPEN_MOUNT, ConfigError, Error
from .result import FreezeResult, Result


@dataclass
class Plan:
    """What a run would do, worked out before anything runs."""

    config_path: str | None
    config: Config | None                 # a valid, well-permitted configuration
    settings: Config                      # config or defaults: freeze and policy settings
    config_problem: Error | None = None   # 305 or 317: the configuration is not used
    pre_check: policy.ScriptCheck | None = None
    post_check: policy.ScriptCheck | None = None
    selection: mountinfo.Selection | None = None
    one_disk: bool = True
    freeze_timeout: float = 60.0
    hooks: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    @property
    def decision_settings(self) -> decide.Settings:
        return decide.Settings(continue_on_failure=self.settings.continue_on_failure,
                               freeze_timeout=self.freeze_timeout,
                               script_timeout=self.settings.timeout)

    def hook_checks(self) -> list:
        """(hook, its policy check) for each hook; checked as its freeze call runs it."""
        return [(h, policy.check_hook(h.path, "pre")) for h in self.hooks]

    def problems(self) -> list:
        """Every problem the checks find, as Errors (what `check` prints)."""
        out = [self.config_problem] if self.config_problem else []
        checks = [(chk, "") for chk in (self.pre_check, self.post_check) if chk is not None]
        checks += [(chk, "hook %s: " % h.name) for h, chk in self.hook_checks()]
        for chk, prefix in checks:
            # refused; or it runs but will likely fail (Windows line endings, say)
            found = [chk.problem] if not chk.ok else getattr(chk, "check_problems", [])
            out += [problem_error(p, prefix) for p in found]
        out += missing_mount_errors(self)
        return out


def problem_error(problem: policy.Problem, prefix: str = "") -> Error:
    """The policy's finding as the one error shape (the boundary with policy.py)."""
    return Error.of(problem.code, prefix + problem.message)


def missing_mount_errors(plan: Plan) -> list:
    return [UNABLE_TO_OPEN_MOUNT.error("%s: not a mount point" % p)
            for p in plan.selection.missing]


def _read_config(config, warnings: list):
    """(path, Config or None, problem Error or None) for CONFIG (a path, a Config, or None)."""
    if isinstance(config, Config):
        return config.path, config, None
    path = config_path(os.fspath(config) if config is not None else None)
    try:
        got = read_config_file(path)
    except ConfigError as exc:
        return path, None, exc.error()
    if got is None:
        warnings.append("no configuration file at %s: no scripts run; the best result is "
                        "filesystem-consistent" % path)
        return path, None, None
    data, st = got
    perm = policy.check_config_stat(st, path)
    if perm:
        return path, None, problem_error(perm)
    try:
        return path, parse_config(data, path), None
    except ConfigError as exc:
        return path, None, exc.error()


def make_plan(config=None, mounts=None, freeze_timeout=None) -> Plan:
    """Reads the configuration, checks permissions and scripts, selects mounts."""
    warnings = []
    path, cfg, problem = _read_config(config, warnings)
    if problem:
        warnings.append("configuration not used (%s): scripts skipped, defaults apply"
                        % problem.code)
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


# -- what a run would record -------------------------------------------------------

def script_facts(plan: Plan) -> tuple:
    """The pre- and post-script's facts known before anything runs: refused by
    the checks, or withheld (the pre-script runs only if the post-script can:
    nothing else would resume the application)."""
    if plan.pre_check is None:
        return decide.StepFact("pre"), decide.StepFact("post", decide.NOT_NEEDED)
    pre, post = plan.pre_check, plan.post_check
    if not pre.ok:
        return (decide.StepFact("pre", decide.REFUSED, pre.path, problem=problem_error(pre.problem)),
                decide.StepFact("post", decide.NOT_NEEDED, post.path))
    if not post.ok:
        return (decide.StepFact("pre", decide.WITHHELD, pre.path),
                decide.StepFact("post", decide.REFUSED, post.path,
                                problem=problem_error(post.problem)))
    return decide.StepFact("pre", decide.OK, pre.path), decide.StepFact("post", decide.OK, post.path)


def withheld_warning(plan: Plan) -> str:
    return ("pre-script %s not run: the post-script cannot run (%s), and nothing else would "
            "resume the application" % (plan.pre_check.path, plan.post_check.problem.code))


def expected_outcome(plan: Plan) -> decide.Outcome:
    """The facts a run would record if every script, hook and the snapshot
    step worked: what the checks already know, the rest assumed fine."""
    o = decide.Outcome(config_error=plan.config_problem, one_disk=plan.one_disk,
                       hooks_configured=bool(plan.hooks))
    o.pre, o.post = script_facts(plan)
    for h, chk in plan.hook_checks():
        o.hook_freeze.append(decide.StepFact("pre", decide.OK, h.name) if chk.ok else decide.StepFact(
            "pre", decide.REFUSED, h.name, problem=problem_error(chk.problem, "hook %s: " % h.name)))
    s = plan.decision_settings
    if not decide.take_snapshot(o, s):
        o.freeze = decide.NOT_ATTEMPTED
        return o
    if not plan.settings.fs_freeze_enabled:
        o.freeze = decide.DISABLED
    elif plan.selection.missing:
        o.freeze = decide.FREEZE_FAILED
        o.freeze_errors = missing_mount_errors(plan)
    else:
        o.freeze = decide.FROZEN if plan.selection.eligible else decide.NOTHING
    if decide.take_snapshot(o, s):
        o.snapshot = decide.TAKEN
    return o


def describe_plan(plan: Plan, outcome: decide.Outcome, verdict: decide.Verdict) -> dict:
    """What a run would do, as data (the dry run's ``plan``; printed in words by the CLI)."""
    cfg = plan.config
    takes = outcome.snapshot == decide.TAKEN

    def script(chk, fact, params, retries):
        if chk is None:
            return None
        d = {"path": chk.path, "runs": fact.state in (decide.OK,),
             "runs_as": list(chk.argv_prefix) + list(params) if chk.ok else None,
             "attempts": retries + 1, "timeout_s": plan.settings.timeout}
        if fact.state == decide.REFUSED:
            d["why_not"] = fact.problem.message
        elif fact.state == decide.WITHHELD:
            d["why_not"] = ("the post-script cannot run (%s): nothing else would resume the "
                            "application" % plan.post_check.problem.code)
        elif fact.state == decide.NOT_NEEDED:
            d["why_not"] = "the pre-script does not run: nothing to resume"
        return d

    return {
        "config": plan.config_path,
        "pre_script": script(plan.pre_check, outcome.pre, cfg.pre_params if cfg else [],
                             plan.settings.pre_retries),
        "hooks": [{"name": h.name, "path": h.path, "runs": chk.ok,
                   "why_not": None if chk.ok else chk.problem.message}
                  for h, chk in plan.hook_checks()],
        "freeze": {"enabled": plan.settings.fs_freeze_enabled, "timeout_s": plan.freeze_timeout,
                   "mounts": [c.mount.mountpoint for c in plan.selection.eligible]
                   if outcome.freeze in (decide.FROZEN, decide.FREEZE_FAILED) else [],
                   "problems": [e.message for e in outcome.freeze_errors]},
        "snapshot": takes,
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
