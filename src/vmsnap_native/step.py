"""The snapshot step: an argv run under supervision, or a callable run in a
thread, stopped at the freeze deadline.  It runs inside the freeze window:
nothing here imports, prints or writes to disk (the log is held).

The step's program is looked up on the PATH scripts get (root-controlled
directories only), never on the caller's; a name with a slash is taken as a
path and must pass the permission policy, like an interpreter: root-owned,
not writable by group or others, every directory and symlink on its way
root's.  When the caller's PATH would have found another program, the
result says so.  The step keeps the rest of the caller's environment (cloud
tools read their credentials from it)."""

from __future__ import annotations

import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from . import decide, policy
from ._record import Record
from .process import run_process
from .result import SnapshotResult

TYPE_CHECKING = False   # true for type checkers; `typing` is not imported for it
if TYPE_CHECKING:
    from .logbook import Logbook

if TYPE_CHECKING:
    from typing import Optional, Union
    # the snapshot step: None (nothing to run), an argv, or a callable run in a thread
    Snapshot = Optional[Union[Sequence[str], Callable[[], object]]]
    # what a step returns: (decide's snapshot state, failure message or None)
    StepOutcome = tuple[str, Optional[str]]

SNAPSHOT_GRACE = 1.0
SNAPSHOT_OUTPUT_LIMIT = 256 * 1024
# what the terminal summary and the log show of the step's output: its end,
# where tools print the id of what they made
OUTPUT_TAIL_LINES = 10
OUTPUT_TAIL_BYTES = 4096


class StepProgram(Record):
    """What the snapshot step ARGV[0] names, as vmsnap runs it."""
    __slots__ = ("name", "path", "problem", "search_path", "caller_would_run")
    name: str
    path: str | None              # the program that runs, a full path
    problem: str | None           # why it must not (or cannot) run
    search_path: str              # the PATH it was looked up on, and that it gets
    caller_would_run: str | None  # what the caller's own PATH finds instead

    def __init__(self, name: str, path: str | None = None, problem: str | None = None,
                 search_path: str = "", caller_would_run: str | None = None) -> None:
        self.name = name
        self.path = path
        self.problem = problem
        self.search_path = search_path
        self.caller_would_run = caller_would_run

    @property
    def warning(self) -> str | None:
        if self.caller_would_run is None:
            return None
        if self.path is None:
            return ("snapshot step %r: your PATH finds %s, which vmsnap does not run: it looks "
                    "the step up only in %s (give a full path that only root can change)"
                    % (self.name, self.caller_would_run, self.search_path or "no directory"))
        return ("snapshot step %r runs %s; your PATH would have run %s instead (vmsnap looks "
                "the step up only in %s)" % (self.name, self.path, self.caller_would_run,
                                               self.search_path))


def find_program(name: str, caller_path: str | None = None) -> StepProgram:
    """Looks NAME up as the snapshot step's program: on the trusted PATH,
    or, with a slash in it, as a path checked by the permission policy.
    CALLER_PATH: the caller's own PATH, to say when it would differ."""
    search = policy.trusted_search_path()
    prog = StepProgram(name=name, search_path=search)
    if not name:
        prog.problem = "the snapshot command is empty"
        return prog
    candidate: str | None
    if "/" in name:
        candidate = os.path.abspath(name)
    else:
        candidate = shutil.which(name, path=search) if search else None
        theirs = shutil.which(name, path=caller_path) if caller_path else None
        if theirs and (candidate is None or not _same_file(theirs, candidate)):
            prog.caller_would_run = theirs
        if candidate is None:
            prog.problem = "%s: not found in %s" % (name, search or "the trusted PATH")
            return prog
    prog.problem = _policy_problem(candidate)
    if prog.problem is None:
        prog.path = candidate
    return prog


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _policy_problem(path: str) -> str | None:
    """Why PATH must not run as the step (None: it may): what decides what
    runs must be root-controlled, as for a script's interpreter."""
    chk = policy.ScriptCheck(path=path, role="snapshot")
    try:
        policy._check_program(chk, path, None, "the snapshot step", 0, 0)
        resolved, st = policy.resolve_checked(path)
    except policy.Unsafe as exc:
        return "%s (a program run as root must be root-owned, in directories only root " \
               "can write)" % exc
    except OSError as exc:
        return "%s: %s" % (path, exc.strerror or exc)
    if chk.hint:
        return chk.hint
    if not stat.S_IMODE(st.st_mode) & 0o111 or not os.access(resolved, os.X_OK):
        return "%s: not executable (chmod 755 %s)" % (path, path)
    return None


def output_tail(output: str, lines: int = OUTPUT_TAIL_LINES,
                limit: int = OUTPUT_TAIL_BYTES) -> str:
    """The last LINES lines of OUTPUT, at most LIMIT characters."""
    kept = output.rstrip("\n").splitlines()[-lines:]
    text = "\n".join(kept)
    return text[-limit:] if len(text) > limit else text


def result_for(snapshot: Snapshot) -> SnapshotResult:
    """The result the step fills in as it goes (kept if the step is interrupted)."""
    if snapshot is None:
        return SnapshotResult(argv=[], exit_code=0)
    if callable(snapshot):
        return SnapshotResult(argv=["python:%s" % _name(snapshot)])
    return SnapshotResult(argv=list(snapshot))


def prepare(snapshot: Snapshot, warnings: list[str] | None = None,
            log: Logbook | None = None) -> StepProgram | None:
    """Looks the step's program up before the freeze (the lookup walks
    directories: it stays out of the freeze window); adds to WARNINGS (and
    LOG) when the caller's PATH would have found another program."""
    if snapshot is None or callable(snapshot) or not list(snapshot):
        return None
    prog = find_program(os.fspath(list(snapshot)[0]), os.environ.get("PATH"))
    if prog.warning:
        if log is not None:
            log.warning("%s", prog.warning)
        if warnings is not None:
            warnings.append(prog.warning)
    return prog


def run_step(snapshot: Snapshot, snap: SnapshotResult, deadline_ns: int, env: Mapping[str, str],
             log: Logbook, program: StepProgram | None = None) -> StepOutcome:
    """Runs SNAPSHOT (None, an argv, or a callable) until DEADLINE_NS, filling
    SNAP in; returns (decide's snapshot state, failure message or None).
    ENV: the caller's environment (its PATH is replaced by the trusted one);
    PROGRAM: what prepare() found (looked up here if not given)."""
    if snapshot is None:
        return decide.TAKEN, None
    if callable(snapshot):
        return _run_callable(snapshot, snap, deadline_ns)
    return _run_argv(snap, deadline_ns, env, log, program)


def _name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _run_argv(snap: SnapshotResult, deadline_ns: int, env: Mapping[str, str], log: Logbook,
              prog: StepProgram | None) -> StepOutcome:
    argv = snap.argv
    if prog is None:
        prog = find_program(argv[0], env.get("PATH"))
    snap.program = prog.path
    if prog.problem:
        snap.exit_code = 127
        log.error("snapshot step %s not run: %s", " ".join(argv), prog.problem)
        return decide.STEP_FAILED, "snapshot step not run: %s" % prog.problem
    try:
        # run_process: a stop signal between the spawn and the wait still kills it
        pr = run_process(argv, env=dict(env, PATH=prog.search_path), executable=prog.path,
                         output_limit=SNAPSHOT_OUTPUT_LIMIT, deadline_ns=deadline_ns,
                         grace=SNAPSHOT_GRACE)
    except OSError as exc:
        return decide.STEP_FAILED, "%s: %s" % (argv[0], exc)
    snap.exit_code, snap.duration_ms, snap.output = pr.exit_code, pr.duration_ms, pr.output
    snap.signal, snap.timed_out = pr.signal, pr.timed_out
    snap.containment = getattr(pr, "containment", None)   # the containment branch's
    log.info("snapshot step %s (%s): %s", " ".join(argv), prog.path, pr.describe())
    if pr.output:
        log.info("snapshot output (last lines):\n%s", output_tail(pr.output))
    if pr.timed_out:
        return decide.PAST_DEADLINE, None
    if not pr.ok:
        return decide.STEP_FAILED, "snapshot step %s %s" % (argv[0], pr.describe())
    return decide.TAKEN, None


def _run_callable(fn: Callable[[], object], snap: SnapshotResult,
                  deadline_ns: int) -> StepOutcome:
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # reported, not raised in a thread nobody joins
            box["error"] = exc

    t = time.monotonic_ns()
    th = threading.Thread(target=target, name="vmsnap-snapshot", daemon=True)
    th.start()
    try:
        th.join(max(0.0, (deadline_ns - time.monotonic_ns()) / 1e9))
    finally:
        snap.duration_ms = round((time.monotonic_ns() - t) / 1e6, 3)
    if th.is_alive():
        snap.timed_out = True
        return decide.PAST_DEADLINE, None
    if "error" in box:
        snap.exit_code = 1
        snap.output = "%s: %s" % (type(box["error"]).__name__, box["error"])
        return decide.STEP_FAILED, "snapshot callable %s raised %s" % (_name(fn), snap.output)
    snap.exit_code = 0
    value = box.get("value")
    snap.output = "" if value is None else str(value)[:SNAPSHOT_OUTPUT_LIMIT]
    return decide.TAKEN, None
