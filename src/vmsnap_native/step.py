"""The snapshot step: an argv run under supervision, or a callable run in a
thread, stopped at the freeze deadline.  It runs inside the freeze window:
nothing here imports, prints or writes to disk (the log is held)."""

from __future__ import annotations

import threading
import time

from . import decide
from .process import Process
from .result import SnapshotResult

SNAPSHOT_GRACE = 1.0
SNAPSHOT_OUTPUT_LIMIT = 256 * 1024


def result_for(snapshot) -> SnapshotResult:
    """The result the step fills in as it goes (kept if the step is interrupted)."""
    if snapshot is None:
        return SnapshotResult(argv=[], exit_code=0)
    if callable(snapshot):
        return SnapshotResult(argv=["python:%s" % _name(snapshot)])
    return SnapshotResult(argv=list(snapshot))


def run_step(snapshot, snap: SnapshotResult, deadline_ns: int, env: dict, log) -> tuple:
    """Runs SNAPSHOT (None, an argv, or a callable) until DEADLINE_NS, filling
    SNAP in; returns (decide's snapshot state, failure message or None)."""
    if snapshot is None:
        return decide.TAKEN, None
    if callable(snapshot):
        return _run_callable(snapshot, snap, deadline_ns)
    return _run_argv(snap, deadline_ns, env, log)


def _name(fn) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _run_argv(snap: SnapshotResult, deadline_ns: int, env: dict, log) -> tuple:
    argv = snap.argv
    try:
        proc = Process(argv, env=env, output_limit=SNAPSHOT_OUTPUT_LIMIT)
        pr = proc.wait(deadline_ns=deadline_ns, grace=SNAPSHOT_GRACE)
    except OSError as exc:
        return decide.STEP_FAILED, "%s: %s" % (argv[0], exc)
    snap.exit_code, snap.duration_ms, snap.output = pr.exit_code, pr.duration_ms, pr.output
    snap.signal, snap.timed_out = pr.signal, pr.timed_out
    snap.containment = getattr(pr, "containment", None)   # the containment branch's
    log.info("snapshot step %s: %s", " ".join(argv), pr.describe())
    if pr.output:
        log.info("snapshot output:\n%s", pr.output.rstrip("\n"))
    if pr.timed_out:
        return decide.PAST_DEADLINE, None
    if not pr.ok:
        return decide.STEP_FAILED, "snapshot step %s %s" % (argv[0], pr.describe())
    return decide.TAKEN, None


def _run_callable(fn, snap: SnapshotResult, deadline_ns: int) -> tuple:
    box = {}

    def target():
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
