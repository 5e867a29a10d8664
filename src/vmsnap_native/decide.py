"""The verdict of a run (SPEC §5) as a pure function of what happened.

The cycle's phases only record facts into an ``Outcome``; ``decide`` turns
the facts and the settings into status, consistency and errors, and
``take_snapshot`` says whether the snapshot step may run.  Nothing here
runs, reads or writes anything, so the whole decision table is tested
without root (tests/test_decide.py).
"""

from __future__ import annotations

from collections import namedtuple

from . import errors
from ._record import Frozen, Record
from .errors import SCRIPT_CODES, Error

TYPE_CHECKING = False   # true for type checkers; `typing` is not imported for it

# What happened to a script, or to one call of a hook (``StepFact.state``).
NOT_CONFIGURED = "not-configured"  # no usable configuration: no scripts
REFUSED = "refused"                # failed its checks (missing, badly permitted): not run
WITHHELD = "withheld"              # pre only: not run, the post-script cannot run
NOT_NEEDED = "not-needed"          # post only: the pre-script did not run, nothing to resume
OK = "ok"
FAILED = "failed"                  # non-zero exit or died, after all retries
TIMED_OUT = "timed-out"            # every attempt exceeded timeoutInSeconds
QUIESCE_LOST = "quiesce-lost"      # post/thaw said the quiesce did not hold (exit 10)
STOPPED = "stopped"                # vmsnap was interrupted while it ran

# The freeze (``Outcome.freeze``).
PENDING = "pending"                # not reached (interrupted before)
DISABLED = "disabled"              # fsFreezeEnabled: false
NOTHING = "nothing"                # no filesystem to freeze
NOT_ATTEMPTED = "not-attempted"    # no snapshot is taken, so no freeze either
FROZEN = "frozen"                  # every filesystem froze
AGENT_FROZE = "agent"              # the agent vmsnap is the hook of froze (qemu-ga, VMware)
FREEZE_FAILED = "failed"           # some did not (errors in ``freeze_errors``); all thawed

# The snapshot step (``Outcome.snapshot``).
NOT_TAKEN = "not-taken"
TAKEN = "taken"                    # the step succeeded
STEP_FAILED = "failed"             # the step failed (its error in ``snapshot_error``)
PAST_DEADLINE = "past-deadline"    # still running at the freeze deadline: stopped
INTERRUPTED = "interrupted"        # vmsnap was interrupted while it ran

# ``Outcome.thawed_early``: the guardian thawed at the freeze deadline.
DEADLINE = "deadline"

QUIESCE_LOST_EXIT = 10
_SCRIPT_FAILURES = (REFUSED, FAILED, TIMED_OUT, STOPPED)
_POST_FAILURES = (REFUSED, FAILED, TIMED_OUT, QUIESCE_LOST, STOPPED)
# The early-thaw causes a guardian reports, in words (others are shown as they come).
_CAUSES = {
    "signal": "the guardian got a signal (`vmsnap thaw --force` sends SIGUSR1)",
    "requested": "a thaw was requested",
    "controller-died": "the guardian saw its controller die",
    "emergency": "the guardian died; the controller thawed",
    "guardian-died": "the guardian died",
}


class StepFact(Frozen):
    """What happened to a script, or to one call of a hook."""

    __slots__ = ("role", "state", "who", "detail", "problem")
    role: str              # "pre" (pre-script, hooks' freeze) or "post" (post-script, thaw)
    state: str
    who: str               # the script's path, or "hook NAME freeze"
    detail: str            # how it went: "exited with status 4 (attempts: 1)"
    problem: Error | None  # REFUSED: why (the policy's finding)

    def __init__(self, role: str, state: str = NOT_CONFIGURED, who: str = "", detail: str = "",
                 problem: Error | None = None) -> None:
        f = object.__setattr__
        f(self, "role", role)
        f(self, "state", state)
        f(self, "who", who)
        f(self, "detail", detail)
        f(self, "problem", problem)


class Outcome(Record):
    """The facts of one run, recorded by its phases in order."""

    __slots__ = ("config_error", "one_disk", "hooks_configured", "pre", "hook_freeze", "freeze",
                 "freeze_errors", "snapshot", "snapshot_error", "thawed_early", "thaw_errors",
                 "hook_thaw", "post", "interrupted")
    config_error: Error | None    # 305/317: the configuration was not used
    one_disk: bool
    hooks_configured: bool        # hooks quiesce when no pre-script is configured
    pre: StepFact
    hook_freeze: list[StepFact]   # StepFacts, in order
    freeze: str
    freeze_errors: list[Error]    # Errors: 121, 122, 123 per mount
    snapshot: str
    snapshot_error: Error | None
    thawed_early: str | None      # the cause, if thawed before the step ended
    thaw_errors: list[Error]      # Errors: a filesystem that did not thaw
    hook_thaw: list[StepFact]     # StepFacts, in order
    post: StepFact
    interrupted: str | None       # the signal's name

    def __init__(self, config_error: Error | None = None, one_disk: bool = True,
                 hooks_configured: bool = False, pre: StepFact | None = None,
                 hook_freeze: list[StepFact] | None = None, freeze: str = PENDING,
                 freeze_errors: list[Error] | None = None, snapshot: str = NOT_TAKEN,
                 snapshot_error: Error | None = None, thawed_early: str | None = None,
                 thaw_errors: list[Error] | None = None, hook_thaw: list[StepFact] | None = None,
                 post: StepFact | None = None, interrupted: str | None = None) -> None:
        self.config_error = config_error
        self.one_disk = one_disk
        self.hooks_configured = hooks_configured
        self.pre = StepFact("pre") if pre is None else pre
        self.hook_freeze = [] if hook_freeze is None else hook_freeze
        self.freeze = freeze
        self.freeze_errors = [] if freeze_errors is None else freeze_errors
        self.snapshot = snapshot
        self.snapshot_error = snapshot_error
        self.thawed_early = thawed_early
        self.thaw_errors = [] if thaw_errors is None else thaw_errors
        self.hook_thaw = [] if hook_thaw is None else hook_thaw
        self.post = StepFact("post", NOT_NEEDED) if post is None else post
        self.interrupted = interrupted


class Settings(Frozen):
    """The settings the decision depends on."""

    __slots__ = ("continue_on_failure", "freeze_timeout", "script_timeout")
    continue_on_failure: bool
    freeze_timeout: float
    script_timeout: float

    def __init__(self, continue_on_failure: bool = True, freeze_timeout: float = 60.0,
                 script_timeout: float = 30.0) -> None:
        object.__setattr__(self, "continue_on_failure", continue_on_failure)
        object.__setattr__(self, "freeze_timeout", freeze_timeout)
        object.__setattr__(self, "script_timeout", script_timeout)


if TYPE_CHECKING:
    from typing import NamedTuple

    class Verdict(NamedTuple):
        status: str                 # "success" | "degraded" | "failed"
        consistency: str | None     # "application" | "filesystem" | "crash" | None
        errors: tuple[Error, ...]   # Errors, in the order they arose
else:   # the same named tuple, without importing typing
    Verdict = namedtuple("Verdict", ("status", "consistency", "errors"))


def scripts_failed(o: Outcome) -> bool:
    """A pre-script or a hook's freeze did not do its job."""
    return o.pre.state in _SCRIPT_FAILURES or any(h.state != OK for h in o.hook_freeze)


def take_snapshot(o: Outcome, s: Settings) -> bool:
    """Whether the snapshot step runs, given the facts so far.  A failure
    stops the backup only with continueBackupOnFailure: false on several
    disks (one disk is point-in-time consistent by itself)."""
    if o.interrupted:
        return False
    lenient = s.continue_on_failure or o.one_disk
    if scripts_failed(o) and not lenient:
        return False
    return not (o.freeze == FREEZE_FAILED and not lenient)


def step_error(f: StepFact, s: Settings) -> Error | None:
    """The error a script's or a hook call's fate gives, if any."""
    codes = SCRIPT_CODES[f.role]
    if f.state == REFUSED:
        return f.problem
    if f.state == TIMED_OUT:
        return codes.timeout.error("%s: every attempt exceeded %gs (%s)"
                                   % (f.who, s.script_timeout, f.detail))
    if f.state == FAILED:
        return codes.failed.error("%s %s" % (f.who, f.detail))
    if f.state == QUIESCE_LOST:
        return codes.failed.error(
            "%s reports that the application's quiesce was lost before the snapshot finished "
            "(exit %d): not application-consistent" % (f.who, QUIESCE_LOST_EXIT))
    return None   # OK, not run by design, or stopped (the Interrupted error says why)


def window_errors(o: Outcome, s: Settings) -> list[Error]:
    """The snapshot step's errors, the deadline's and an early thaw's."""
    out = [o.snapshot_error] if o.snapshot_error else []
    frozen = o.freeze in (FROZEN, AGENT_FROZE)
    if o.snapshot == PAST_DEADLINE and o.freeze == AGENT_FROZE:
        out.append(errors.FS_FREEZE_TIMEOUT.error(
            "the agent's last call did not come within freezeTimeoutInSeconds (%gs): vmsnap "
            "thawed every filesystem the agent could have frozen" % s.freeze_timeout))
    elif o.snapshot == PAST_DEADLINE:
        out.append(errors.FS_FREEZE_TIMEOUT.error(
            "the snapshot step was still running at the freeze deadline (%gs): thawed and "
            "stopped" % s.freeze_timeout) if frozen else errors.SNAPSHOT_FAILED.error(
            "the snapshot step exceeded %gs and was stopped" % s.freeze_timeout))
    if frozen and o.thawed_early == DEADLINE and o.snapshot != PAST_DEADLINE:
        out.append(errors.FS_FREEZE_TIMEOUT.error(
            "the guardian thawed at the freeze deadline (%gs)" % s.freeze_timeout))
    elif frozen and o.thawed_early and o.thawed_early != DEADLINE:
        out.append(errors.FS_THAWED_EARLY.error(
            "the filesystems were thawed before the snapshot step ended (%s): the snapshot "
            "is not trusted" % _CAUSES.get(o.thawed_early, o.thawed_early)))
    return out


def _errors(o: Outcome, s: Settings) -> tuple[Error, ...]:
    out: list[Error | None] = [o.config_error] if o.config_error else []
    out += [step_error(f, s) for f in [o.pre, *o.hook_freeze]]
    out += o.freeze_errors + window_errors(o, s) + o.thaw_errors
    out += [step_error(f, s) for f in [*o.hook_thaw, o.post]]
    if o.interrupted:
        out.append(errors.INTERRUPTED.error(
            "vmsnap got %s: it thawed at once, ran the thaw hooks and the post-script (if the "
            "pre-script ran); no snapshot is trusted" % o.interrupted))
    return tuple(e for e in out if e is not None)


def snapshot_stands(o: Outcome) -> bool:
    """The snapshot step succeeded on filesystems that stayed frozen throughout."""
    return (o.snapshot == TAKEN and not o.interrupted
            and not (o.freeze in (FROZEN, AGENT_FROZE) and o.thawed_early))


def consistency(o: Outcome) -> str:
    """What a standing snapshot is worth: application when the application
    quiesced and the freeze (if any) held; filesystem when only the freeze did."""
    quiesced = all(h.state == OK for h in o.hook_freeze) and (
        o.pre.state == OK or (o.pre.state == NOT_CONFIGURED and o.hooks_configured))
    lost = any(f.state == QUIESCE_LOST for f in [*o.hook_thaw, o.post])
    if o.freeze in (FROZEN, AGENT_FROZE):
        return "application" if quiesced and not lost else "filesystem"
    if o.freeze in (DISABLED, NOTHING):   # no freeze asked for, or nothing to freeze
        return "application" if quiesced and not lost else "crash"
    return "crash"   # the freeze failed


def decide(o: Outcome, s: Settings) -> Verdict:
    """Status, consistency and errors of a run whose facts are O (SPEC §5)."""
    errs = _errors(o, s)
    if not snapshot_stands(o):
        return Verdict("failed", None, errs)
    if o.post.state in _POST_FAILURES and not s.continue_on_failure:
        return Verdict("failed", consistency(o), errs)
    return Verdict("degraded" if errs else "success", consistency(o), errs)
