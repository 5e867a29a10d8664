"""Running the pre- and post-scripts (SPEC §3): separate arguments, a clean
environment, retries that really re-run, a timeout per attempt that stops
the whole process group, output kept and logged."""

from __future__ import annotations

from collections.abc import Iterable

from .decide import QUIESCE_LOST_EXIT
from .policy import ScriptCheck
from .process import ProcessResult, clean_environment, run_process
from .result import ScriptResult

TYPE_CHECKING = False   # true for type checkers; `typing` is not imported for it
if TYPE_CHECKING:
    from .logbook import Logbook

SCRIPT_OUTPUT_LIMIT = 256 * 1024
SCRIPT_GRACE = 2.0


def run_script(check: ScriptCheck, params: Iterable[str], retries: int, timeout: float,
               log: Logbook | None = None, name: str | None = None,
               watched: list[int] | None = None) -> tuple[ScriptResult, ProcessResult, bool]:
    """Runs a checked script until it succeeds or RETRIES retries are used.

    Returns (ScriptResult, last ProcessResult, whether every attempt timed
    out).  Each attempt is a fresh process with its own TIMEOUT.  With
    WATCHED (a list), each attempt's process group stays registered with the
    reaper and its pgid is appended: whatever the script left running (a
    lock session, say) dies if vmsnap dies before releasing it.
    """
    label = name or "%s-script" % check.role
    res = ScriptResult(path=check.path)
    argv = list(check.argv_prefix) + list(params)
    last: ProcessResult   # set by the first attempt (retries >= 0)
    total_ms = 0.0
    timeouts = 0
    env = clean_environment({"VMSNAP_PHASE": check.role})
    for attempt in range(1, retries + 2):
        last = run_process(argv, timeout=timeout, grace=SCRIPT_GRACE, env=env, cwd="/",
                           output_limit=SCRIPT_OUTPUT_LIMIT, keep_watched=watched is not None)
        if watched is not None and last.pid:
            watched.append(last.pid)
        total_ms += last.duration_ms
        timeouts += last.timed_out
        res.ran = True
        res.attempts = attempt
        if log:
            log.info("%s attempt %d/%d: %s (%.1f ms)", label, attempt, retries + 1,
                     last.describe(), last.duration_ms)
            if last.output:
                log.info("%s output:\n%s", label, last.output.rstrip("\n"))
        # exit 10 from a post-script (or a thaw call) reports a lost quiesce: a
        # retry cannot undo that, and its own result would hide the report
        if last.ok or (check.role == "post" and last.exit_code == QUIESCE_LOST_EXIT):
            break
    res.exit_code = last.exit_code
    res.signal = last.signal
    res.timed_out = last.timed_out
    res.duration_ms = round(total_ms, 3)
    res.output = last.output
    return res, last, timeouts == res.attempts
