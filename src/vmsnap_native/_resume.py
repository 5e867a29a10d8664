"""Resume the application after vmsnap was SIGKILLed mid-run.

The run registers this command with its reaper (``register()``, which
every entry point uses) as soon as its pre-script (or a hook's freeze) may
have paused an application; the reaper runs it when the run dies without
clearing it (``clear()``), once the guardian has thawed and exited.  The
command imports the very package the run imported (``resume_command()``:
its directory goes first on an explicit PYTHONPATH, so a vendored copy that
is importable only through the caller's PYTHONPATH is found too); the
reaper logs it when the command cannot start or dies before it could log
itself.  It re-reads the configuration,
re-checks each script with the policy (what runs as root is checked as it
runs, as in a run), runs the thaw hooks in reverse order and the
post-script with their timeouts and retries, and logs to the run's log:

    python -c 'from vmsnap_native._resume import run; run()' --config PATH
           [--log-file F] [--post] [--hook PATH]... [--thaw-record R]... [--bound S]

(not ``python -m vmsnap_native._resume``: runpy would execute this module
as ``__main__`` beside the copy its package's own imports may load, and
says so on stderr, which the reaper logs as the command's error)

--post: the pre-script ran, so the post-script runs; --hook: a hook whose
freeze call started, in the order they started; --bound: the longest its
scripts can take (said in the run lock, so that a run started meanwhile
waits for it that long).  Exit status 0 when everything that had to run
succeeded, 1 otherwise.

What the run has already done is left out by the reaper (``job()``): the
post-script, or a hook's thaw call, whose attempt had ended when the run
died has run, however little before; one the reaper had to kill runs again
from the start.  So the post-script runs to its end once per pre-script.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence

from . import lock as lock_mod
from . import policy, process
from .config import Config, parse_config, read_config_file
from .errors import BusyError, ConfigError
from .freeze import RUNTIME_DIR_ENV, runtime_dir
from .lock import RunLock
from .logbook import Logbook
from .scripts import SCRIPT_GRACE, run_script

MODULE = "vmsnap_native._resume"
# The command's code: an ordinary import, so this module is loaded once.
CODE = "from %s import run; run()" % MODULE
# Python starting and importing, the log: added to the scripts' own bound.
_START_S = 10.0


def package_root() -> str:
    """The directory holding the vmsnap_native package this process imported."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python() -> str:
    """This interpreter; where it is not known (embedded), the python3 on
    the clean PATH."""
    exe = sys.executable
    if exe and os.path.isabs(exe) and os.access(exe, os.X_OK):
        return exe
    return shutil.which("python3", path=process.clean_environment()["PATH"]) or "/usr/bin/python3"


def scripts_bound(timeout: float, retries: int, n_scripts: int) -> float:
    """The longest N_SCRIPTS scripts run one after the other can take, each
    with up to RETRIES retries of TIMEOUT seconds (and the grace period
    after each timeout)."""
    return n_scripts * (retries + 1) * (float(timeout) + SCRIPT_GRACE)


def resume_command(config: str, *, log_file: str | None = None, post: bool = False,
                   hooks: Sequence[str] = (), bound_s: float | None = None,
                   thaw_records: Sequence[str] = (), thaw_at_ns: int = 0
                   ) -> tuple[list[str], dict[str, str]]:
    """(argv, env) of the resume command: this interpreter running this
    module of the very package imported here (its directory first on
    PYTHONPATH, set explicitly: nothing is inherited), the runtime directory
    (for the run lock) and the clean environment scripts get."""
    argv = [_python(), "-c", CODE, "--config", os.path.abspath(config)]
    if log_file:
        argv += ["--log-file", os.path.abspath(log_file)]
    if post:
        argv.append("--post")
    for h in hooks:
        argv += ["--hook", os.path.abspath(h)]
    for r in thaw_records:
        argv += ["--thaw-record", r]
    if thaw_at_ns:
        argv += ["--thaw-at", str(int(thaw_at_ns))]
    if bound_s:
        argv += ["--bound", "%.3f" % bound_s]
    # PYTHONSAFEPATH (3.11+): not even the cwd (/) goes before that directory
    env = process.clean_environment({"PYTHONPATH": package_root(), "PYTHONSAFEPATH": "1",
                                     "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1",
                                     RUNTIME_DIR_ENV: runtime_dir()})
    return argv, env


def register(config: str, *, log_file: str | None = None, post: bool = False,
             hooks: Sequence[str] = (), wait_for: Sequence[tuple[int, int]] = (),
             thaw_records: Sequence[str] = (),
             timeout: float, retries: int, wait_until_ns: int = 0,
             thaw_at_ns: int = 0) -> None:
    """Tells this process's reaper how to resume the application should
    this process die from now on: the thaw hooks HOOKS (paths, in the order
    their freeze calls started) and, if POST, the post-script of CONFIG,
    each with TIMEOUT seconds and RETRIES retries, once every (pid, start
    time) in WAIT_FOR (the freeze guardian: its thaw comes first, by
    WAIT_UNTIL_NS, CLOCK_MONOTONIC) is gone; THAW_AT_NS (CLOCK_MONOTONIC):
    the records are thawed then, not at once (an agent may still freeze
    until its session's deadline); failures to start it go to
    LOG_FILE.  The run lock this process holds says so, so that a run
    started after our death waits for that resume instead of failing.
    Call again when any of it changes; ``clear()`` when the run is over.
    OSError (E2BIG) when it does not fit, ValueError for a bad command."""
    bound = scripts_bound(timeout, retries, len(hooks) + bool(post)) + _START_S
    argv, env = resume_command(config, log_file=log_file, post=post, hooks=hooks, bound_s=bound,
                               thaw_records=thaw_records, thaw_at_ns=thaw_at_ns)
    process.set_resume_command(argv, env, wait_for=wait_for, log_file=log_file)
    _registered[:] = argv
    held = lock_mod.held()
    if held is not None:
        start = max(time.monotonic_ns(), int(wait_until_ns or 0), int(thaw_at_ns or 0))
        held.announce_resume(process.reaper_identity(), start + int(bound * 1e9))


# The argv registered last (job() finds a job's arguments in it).
_registered: list[str] = []


def _job_args(post: bool, hook: str | None) -> int:
    """The bits of the registered argv's indices that ask for the post-script
    (POST) or HOOK's thaw call; 0 when it is not there (or past the 64th)."""
    argv = _registered
    for i, a in enumerate(argv[:64]):
        if post and a == "--post":
            return 1 << i
        if hook and a == "--hook" and i + 1 < min(len(argv), 64) and \
                argv[i + 1] == os.path.abspath(hook):
            return 3 << i
    return 0


@contextlib.contextmanager
def job(*, post: bool = False, hook: str | None = None) -> Iterator[None]:
    """Runs the post-script (POST) or HOOK's thaw call, a job of the resume
    registered: once it has run (ended, whatever its status) the resume
    leaves it out, also when vmsnap dies between its end and this block's;
    killed before its end (by the reaper, or by us on an exception), the
    resume runs it again (SIGKILL after the post-script: no second run)."""
    args = _job_args(post, hook)
    if not args:
        yield
        return
    process.resume_job_begin(args)
    try:
        yield
    except BaseException:
        process.resume_job_begin(0)   # its attempt was stopped: the job has not run
        raise
    process.resume_job_done(args)


def clear() -> None:
    """The reaper has nothing to resume any more (the run resumed the
    application itself)."""
    process.set_resume_command(None)
    _registered[:] = []
    held = lock_mod.held()
    if held is not None:
        held.announce_resume(None)


def _config(path: str) -> Config:
    """The configuration, or raises ConfigError saying why it cannot be used."""
    got = read_config_file(path)
    if got is None:
        raise ConfigError("%s: the configuration file is gone" % path)
    data, st = got
    problem = policy.check_config_stat(st, path)
    if problem:
        raise ConfigError(problem.message)
    return parse_config(data, path)


def _run(log: Logbook, path: str, role: str, params: Sequence[str], retries: int,
         timeout: float, name: str,
         check: Callable[[str, str], policy.ScriptCheck] = policy.check_script) -> bool:
    chk = check(path, role)
    if chk.problem is not None:   # refused
        log.error("resume: %s not run: %s (%s)", name, chk.problem.message, chk.problem.code)
        return False
    sr, last, _ = run_script(chk, params, retries, timeout, log=log, name="resume: %s" % name)
    log.info("resume: %s %s", name, "done" if sr.ok else "failed: %s" % last.describe())
    return sr.ok


def resume(config: str, post: bool, hook_paths: Sequence[str], log: Logbook) -> bool:
    if not post and not hook_paths:
        log.info("resume: vmsnap died with no script or thaw hook of its own left to "
                 "run (none configured, none started, or all had run): nothing left to run")
        return True
    log.warning("resume: vmsnap died after the application was quiesced; running %s "
                "(vmsnap from %s)",
                " and ".join(x for x in ("the thaw hooks" if hook_paths else "",
                                         "the post-script" if post else "") if x) or "nothing",
                package_root())
    try:
        cfg = _config(config)
    except (ConfigError, OSError) as exc:
        log.error("resume: cannot use the configuration: %s", exc)
        return False
    ok = True
    for path in reversed(hook_paths):
        name = "hook %s thaw" % os.path.basename(path)
        ok = _run(log, path, "post", ["thaw"], cfg.post_retries, cfg.timeout, name,
                  policy.check_hook) and ok
    if post:
        ok = _run(log, cfg.post_script or "", "post", cfg.post_params, cfg.post_retries,
                  cfg.timeout, "post-script") and ok
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vmsnap resume")
    p.add_argument("--config", required=True)
    p.add_argument("--log-file")
    p.add_argument("--post", action="store_true")
    p.add_argument("--hook", action="append", default=[])
    p.add_argument("--thaw-record", action="append", default=[],
                   help="a record of filesystems a dead guardian or agent may have left frozen: "
                        "thawed first")
    p.add_argument("--thaw-at", type=int, default=0, metavar="NS",
                   help="CLOCK_MONOTONIC nanoseconds: thaw the records then, not at once")
    p.add_argument("--bound", type=float, default=None)
    args = p.parse_args(argv)
    log = Logbook(args.log_file)
    # the run lock, as a run holds it: a run started right after the SIGKILL
    # must not have its quiesce released by this post-script mid-snapshot;
    # such a run waits for us (up to our bound) instead
    lock = RunLock(role="resume", bound_s=args.bound)
    try:
        try:
            lock.acquire(wait=True)
        except BusyError as exc:
            log.error("resume: %s; resuming anyway", exc)
        # an agent's session that ended early: the agent may freeze until the
        # session's deadline, so the thaw comes then (the lock is held meanwhile,
        # as the session itself held it)
        while args.thaw_record and time.monotonic_ns() < args.thaw_at:
            time.sleep(min((args.thaw_at - time.monotonic_ns()) / 1e9, 0.25))
        for record in args.thaw_record:
            from .agents.agentfs import thaw_agent_record
            try:
                notes = thaw_agent_record(record)
            except (OSError, ValueError) as exc:   # unreadable: `vmsnap thaw` says more
                log.error("resume: thaw from %s: %s", record, exc)
                continue
            for note in notes:
                log.warning("resume: thaw: %s", note)
        return 0 if resume(args.config, args.post, args.hook, log) else 1
    finally:
        lock.release()
        log.close()


def run() -> None:
    """The resume command's entry (CODE): main() with this process's arguments."""
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
