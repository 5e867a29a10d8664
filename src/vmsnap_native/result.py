"""The result of a run: data that prints as the JSON result object (``--json``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import Error


def _plain(obj: Any) -> Any:
    """OBJ with every Error in it (at any depth) as its dict: ``asdict`` converts
    only dataclasses, and an Error is a plain value class."""
    if isinstance(obj, Error):
        return obj.to_dict()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):   # a named tuple, as asdict does
        return type(obj)(*[_plain(v) for v in obj])
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


@dataclass
class ScriptResult:
    path: str
    ran: bool = False
    attempts: int = 0
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    duration_ms: float = 0.0
    output: str = ""
    containment: str | None = None   # how its process tree was held: cgroup, subreaper

    @property
    def ok(self) -> bool:
        return self.ran and self.exit_code == 0 and not self.timed_out


@dataclass
class FreezeResult:
    enabled: bool = True
    window_ms: float | None = None
    deadline_hit: bool = False
    mounts: list[dict[str, Any]] = field(default_factory=list)   # dicts, see MountResult.to_dict
    rcu_expedited: bool = False   # RCU grace periods were expedited for the freeze
    thawed_early: str | None = None   # why the filesystems thawed before the step ended


@dataclass
class SnapshotResult:
    argv: list[str]
    program: str | None = None   # the full path that ran (looked up on the trusted PATH)
    exit_code: int | None = None
    duration_ms: float = 0.0
    output: str = ""
    signal: int | None = None
    timed_out: bool = False
    containment: str | None = None


@dataclass
class Result:
    status: str = "failed"
    consistency: str | None = None
    errors: list[Error] = field(default_factory=list)   # Errors (errors.Error), in the order they arose
    warnings: list[str] = field(default_factory=list)
    pre_script: ScriptResult | None = None
    post_script: ScriptResult | None = None
    freeze: FreezeResult = field(default_factory=FreezeResult)
    snapshot: SnapshotResult | None = None
    duration_ms: float = 0.0
    # per hook call (hooksDirectory): {hook, action, the call's ScriptResult fields, error}
    hooks: list[dict[str, Any]] = field(default_factory=list)
    phases: list[dict[str, Any]] = field(default_factory=list)   # {phase, start_ms, duration_ms}
    plan: dict[str, Any] | None = None   # a dry run: what a run would do (see cycle.describe_plan)

    def add_error(self, error: Error) -> Error:
        self.errors.append(error)
        return error

    def has_error(self, *codes: str) -> bool:
        return any(e.code in codes for e in self.errors)

    @property
    def exit_status(self) -> int:
        return {"success": 0, "degraded": 3}.get(self.status, 1)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = _plain(asdict(self))
        return d

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)
