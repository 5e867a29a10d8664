"""The result of a run: data that prints as the JSON result object (``--json``)."""

from __future__ import annotations

import json

from ._record import Record
from .errors import Error

TYPE_CHECKING = False   # true for type checkers; `typing` is not imported for it
if TYPE_CHECKING:
    from typing import Any


def _plain(obj: Any) -> Any:
    """OBJ as JSON data, as ``dataclasses.asdict`` made it: every value class
    in it (at any depth; an Error too) a dict of its fields in order, every
    dict, list and tuple a new one."""
    if isinstance(obj, Record):
        return {n: _plain(getattr(obj, n)) for n in obj.__slots__}
    if hasattr(type(obj), "__dataclass_fields__"):   # a dataclass still (held.py's)
        from dataclasses import asdict
        return _plain(asdict(obj))
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):   # a named tuple
        return type(obj)(*[_plain(v) for v in obj])
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


class ScriptResult(Record):
    __slots__ = ("path", "ran", "attempts", "exit_code", "signal", "timed_out", "duration_ms",
                 "output", "containment")
    path: str
    ran: bool
    attempts: int
    exit_code: int | None
    signal: int | None
    timed_out: bool
    duration_ms: float
    output: str
    containment: str | None   # how its process tree was held: cgroup, subreaper

    def __init__(self, path: str, ran: bool = False, attempts: int = 0,
                 exit_code: int | None = None, signal: int | None = None,
                 timed_out: bool = False, duration_ms: float = 0.0, output: str = "",
                 containment: str | None = None) -> None:
        self.path = path
        self.ran = ran
        self.attempts = attempts
        self.exit_code = exit_code
        self.signal = signal
        self.timed_out = timed_out
        self.duration_ms = duration_ms
        self.output = output
        self.containment = containment

    @property
    def ok(self) -> bool:
        return self.ran and self.exit_code == 0 and not self.timed_out


class FreezeResult(Record):
    __slots__ = ("enabled", "window_ms", "deadline_hit", "mounts", "rcu_expedited",
                 "thawed_early")
    enabled: bool
    window_ms: float | None
    deadline_hit: bool
    mounts: list[dict[str, Any]]   # dicts, see MountResult.to_dict
    rcu_expedited: bool            # RCU grace periods were expedited for the freeze
    thawed_early: str | None       # why the filesystems thawed before the step ended

    def __init__(self, enabled: bool = True, window_ms: float | None = None,
                 deadline_hit: bool = False, mounts: list[dict[str, Any]] | None = None,
                 rcu_expedited: bool = False, thawed_early: str | None = None) -> None:
        self.enabled = enabled
        self.window_ms = window_ms
        self.deadline_hit = deadline_hit
        self.mounts = [] if mounts is None else mounts
        self.rcu_expedited = rcu_expedited
        self.thawed_early = thawed_early


class SnapshotResult(Record):
    __slots__ = ("argv", "program", "exit_code", "duration_ms", "output", "signal", "timed_out",
                 "containment")
    argv: list[str]
    program: str | None   # the full path that ran (looked up on the trusted PATH)
    exit_code: int | None
    duration_ms: float
    output: str
    signal: int | None
    timed_out: bool
    containment: str | None

    def __init__(self, argv: list[str], program: str | None = None,
                 exit_code: int | None = None, duration_ms: float = 0.0, output: str = "",
                 signal: int | None = None, timed_out: bool = False,
                 containment: str | None = None) -> None:
        self.argv = argv
        self.program = program
        self.exit_code = exit_code
        self.duration_ms = duration_ms
        self.output = output
        self.signal = signal
        self.timed_out = timed_out
        self.containment = containment


class Result(Record):
    __slots__ = ("status", "consistency", "errors", "warnings", "pre_script", "post_script",
                 "freeze", "snapshot", "duration_ms", "hooks", "phases", "plan")
    status: str
    consistency: str | None
    errors: list[Error]   # Errors (errors.Error), in the order they arose
    warnings: list[str]
    pre_script: ScriptResult | None
    post_script: ScriptResult | None
    freeze: FreezeResult
    snapshot: SnapshotResult | None
    duration_ms: float
    # per hook call (hooksDirectory): {hook, action, the call's ScriptResult fields, error}
    hooks: list[dict[str, Any]]
    phases: list[dict[str, Any]]   # {phase, start_ms, duration_ms}
    plan: dict[str, Any] | None    # a dry run: what a run would do (see cycle.describe_plan)

    def __init__(self, status: str = "failed", consistency: str | None = None,
                 errors: list[Error] | None = None, warnings: list[str] | None = None,
                 pre_script: ScriptResult | None = None, post_script: ScriptResult | None = None,
                 freeze: FreezeResult | None = None, snapshot: SnapshotResult | None = None,
                 duration_ms: float = 0.0, hooks: list[dict[str, Any]] | None = None,
                 phases: list[dict[str, Any]] | None = None,
                 plan: dict[str, Any] | None = None) -> None:
        self.status = status
        self.consistency = consistency
        self.errors = [] if errors is None else errors
        self.warnings = [] if warnings is None else warnings
        self.pre_script = pre_script
        self.post_script = post_script
        self.freeze = FreezeResult() if freeze is None else freeze
        self.snapshot = snapshot
        self.duration_ms = duration_ms
        self.hooks = [] if hooks is None else hooks
        self.phases = [] if phases is None else phases
        self.plan = plan

    def add_error(self, error: Error) -> Error:
        self.errors.append(error)
        return error

    def has_error(self, *codes: str) -> bool:
        return any(e.code in codes for e in self.errors)

    @property
    def exit_status(self) -> int:
        return {"success": 0, "degraded": 3}.get(self.status, 1)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = _plain(self)
        return d

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)
