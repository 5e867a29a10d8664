"""Resume the application after vmsnap was SIGKILLed mid-run.

The run registers this command with its reaper (process.set_resume_command)
as soon as its pre-script (or a hook's freeze) may have paused an
application; the reaper runs it when the run dies without clearing it,
once the guardian has thawed and exited.  It re-reads the configuration,
re-checks each script with the policy (what runs as root is checked as it
runs, as in a run), runs the thaw hooks in reverse order and the
post-script with their timeouts and retries, and logs to the run's log:

    python -m vmsnap_native._resume --config PATH [--log-file F] [--post] [--hook PATH]...

--post: the pre-script ran, so the post-script runs; --hook: a hook whose
freeze call started, in the order they started.  Exit status 0 when
everything that had to run succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import policy
from .config import parse_config, read_config_file
from .errors import BusyError, ConfigError
from .lock import RunLock
from .logbook import Logbook
from .scripts import run_script


def _config(path: str):
    """The configuration, or raises ConfigError saying why it cannot be used."""
    got = read_config_file(path)
    if got is None:
        raise ConfigError("%s: the configuration file is gone" % path)
    data, st = got
    problem = policy.check_config_stat(st, path)
    if problem:
        raise ConfigError(problem.message)
    return parse_config(data, path)


def _run(log: Logbook, path: str, role: str, params, retries: int, timeout: float,
         name: str, check=policy.check_script) -> bool:
    chk = check(path, role)
    if not chk.ok:
        log.error("resume: %s not run: %s (%s)", name, chk.problem.message, chk.problem.code)
        return False
    sr, last, _ = run_script(chk, params, retries, timeout, log=log, name="resume: %s" % name)
    log.info("resume: %s %s", name, "done" if sr.ok else "failed: %s" % last.describe())
    return sr.ok


def resume(config: str, post: bool, hook_paths, log: Logbook) -> bool:
    log.warning("resume: vmsnap died after the application was quiesced; running %s",
                " and ".join(x for x in ("the thaw hooks" if hook_paths else "",
                                         "the post-script" if post else "") if x) or "nothing")
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vmsnap_native._resume")
    p.add_argument("--config", required=True)
    p.add_argument("--log-file")
    p.add_argument("--post", action="store_true")
    p.add_argument("--hook", action="append", default=[])
    p.add_argument("--thaw-record", action="append", default=[],
                   help="a record of filesystems an agent may have left frozen: thawed first")
    args = p.parse_args(argv)
    log = Logbook(args.log_file)
    # the run lock, as a run holds it: a run started right after the SIGKILL
    # must not have its quiesce released by this post-script mid-snapshot
    lock = RunLock()
    try:
        try:
            lock.acquire(wait=True)
        except BusyError as exc:
            log.error("resume: %s; resuming anyway", exc)
        for record in args.thaw_record:
            from .agents.agentfs import thaw_agent_record
            for note in thaw_agent_record(record):
                log.warning("resume: thaw: %s", note)
        return 0 if resume(args.config, args.post, args.hook, log) else 1
    finally:
        lock.release()
        log.close()


if __name__ == "__main__":
    sys.exit(main())
