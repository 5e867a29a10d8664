"""Per-application hooks: several applications on one machine.

Every executable in the hooks directory (default /etc/vmsnap/hooks.d) is
called with ``freeze`` before the freeze, in name order, and with ``thaw``
after the thaw, in reverse order; each under the same permission policy,
retries and timeout as the pre-/post-script.  Editor and package-manager
leftovers are ignored.
"""

from __future__ import annotations

import fnmatch
import os
import stat

from . import policy
from ._record import Record
from .result import ScriptResult
from .scripts import run_script

TYPE_CHECKING = False   # true for type checkers; `typing` is not imported for it
if TYPE_CHECKING:
    from typing import Any

    from .logbook import Logbook

IGNORED_PATTERNS = ("*~", "*.dpkg-*", "*.rpmnew", "*.rpmsave", "*.rpmorig", "*.sample",
                    "*.swp", "*.bak", ".*", "#*#")


class Hook(Record):
    __slots__ = ("name", "path")
    name: str
    path: str

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path


class HookRun(Record):
    __slots__ = ("hook", "action", "result", "problem", "last", "all_timed_out", "hint")
    hook: Hook
    action: str
    result: ScriptResult
    problem: policy.Problem | None
    last: object
    all_timed_out: bool
    hint: str | None   # the policy's guess why a run fails (policy.ScriptCheck.hint)

    def __init__(self, hook: Hook, action: str, result: ScriptResult,
                 problem: policy.Problem | None = None, last: object = None,
                 all_timed_out: bool = False, hint: str | None = None) -> None:
        self.hook = hook
        self.action = action
        self.result = result
        self.problem = problem
        self.last = last
        self.all_timed_out = all_timed_out
        self.hint = hint

    def to_dict(self) -> dict[str, Any]:
        d = {"hook": self.hook.name, "action": self.action, **self.result.fields()}
        d["error"] = self.problem.message if self.problem else None
        return d


def ignored(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in IGNORED_PATTERNS)


def discover(directory: str) -> list[Hook]:
    """The hooks in DIRECTORY in name order ([] if there is no directory)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:   # no directory (the default one need not exist)
        return []
    out = []
    for name in names:
        if ignored(name):
            continue
        path = os.path.join(directory, name)
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            out.append(Hook(name, path))
    return out


def run_hook(hook: Hook, action: str, retries: int, timeout: float, log: Logbook | None = None,
             watched: list[int] | None = None) -> HookRun:
    role = "pre" if action == "freeze" else "post"
    chk = policy.check_hook(hook.path, role)
    if chk.problem is not None:   # refused by the policy
        problem = policy.Problem(chk.problem.code, "hook %s: %s" % (hook.name, chk.problem.message))
        return HookRun(hook, action, ScriptResult(path=hook.path, ran=False), problem=problem)
    res, last, all_timed_out = run_script(chk, [action], retries, timeout, log=log,
                                          name="hook %s %s" % (hook.name, action),
                                          watched=watched)
    return HookRun(hook, action, res, last=last, all_timed_out=all_timed_out, hint=chk.hint)
