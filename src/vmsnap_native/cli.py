"""The ``vmsnap`` command.

Exit statuses: run: 0 success, 3 degraded, 1 failed, 2 usage; check: 0 all
good, 1 problems; freeze/thaw/demo/bench: 0 or 1.  ``--json`` prints one
JSON object on stdout and nothing else there; human text goes to stderr
(``-q``: only errors; ``-v``: the log's records too).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from ._version import __version__

TYPE_CHECKING = False   # true for type checkers; `typing` is not imported for it

# Each command imports what it uses, when it runs: agents start `vmsnap hook`
# on every snapshot, and `--version` or `mounts` need neither the freeze nor
# the scripts' machinery.

if TYPE_CHECKING:
    from typing import Any

    from .result import Result

EXIT_USAGE = 2
NEEDS_ROOT = {"run", "freeze", "thaw", "demo", "bench"}
JSON_HELP = "print one JSON object on stdout (the human report still goes to stderr)"
SNAPSHOT_METAVAR = "-- SNAPSHOT_CMD"

# -q: the human lines are kept here and only the errors printed at the end
_quiet: dict[str, Any] = {"on": False, "lines": []}


def _level(line: str) -> str:
    word = line.lstrip().split(" ", 1)[0]
    return {"error": "ERROR", "warning:": "WARNING"}.get(word, "INFO")


def err(*lines: str) -> None:
    """Human text on stderr; with syslog priorities when stderr is the journal."""
    if _quiet["on"]:
        _quiet["lines"].extend(lines)
        return
    from .logbook import journal_line
    for line in lines:
        print(journal_line(line, _level(line)), file=sys.stderr)


def _quiet_end(status: int) -> None:
    """-q: nothing when all went well; else the error lines (each with its
    action), or, where none is marked as an error, what the command said."""
    lines, _quiet["lines"], _quiet["on"] = _quiet["lines"], [], False
    if status == 0:
        return
    errors, keep = [], False
    for line in lines:
        if _level(line) == "ERROR":
            keep = True
        elif not line.lstrip().startswith("->"):
            keep = False
        if keep:
            errors.append(line)
    err(*(errors or lines))


def _echo_log() -> None:
    """-v: the log's records on stderr as well (unless it already is the
    journal, which gets them anyway)."""
    import logging

    from .logbook import LOGGER, stderr_is_journal
    if stderr_is_journal():
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("vmsnap log: %(levelname)s %(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)


def emit_json(obj: object) -> None:
    import json
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    sys.stdout.flush()


# -- run ------------------------------------------------------------------------

def summarize(res: Result) -> list[str]:
    """A short human report: what happened, consistency, window, actions."""
    from . import step
    lines = []
    cons = res.consistency or "no snapshot"
    window = res.freeze.window_ms
    frozen = sum(1 for m in res.freeze.mounts if m.get("frozen"))
    head = "vmsnap: %s, %s" % (res.status, cons if res.consistency is None
                               else cons + "-consistent")
    if window is not None:
        head += "; freeze window %.1f ms (%d filesystem%s)" % (window, frozen,
                                                               "" if frozen == 1 else "s")
    elif not res.freeze.enabled:
        head += "; freeze disabled"
    lines.append(head + "; %.0f ms in all" % res.duration_ms)
    for label, sr in (("pre-script", res.pre_script), ("post-script", res.post_script)):
        if sr is None:
            continue
        if not sr.ran:
            lines.append("  %-12s %s: not run" % (label, sr.path))
        else:
            state = "ok" if sr.ok else ("timed out" if sr.timed_out else
                                        "failed (exit %s, signal %s)" % (sr.exit_code, sr.signal))
            lines.append("  %-12s %s: %s in %.0f ms, %d attempt%s" % (
                label, sr.path, state, sr.duration_ms, sr.attempts, "" if sr.attempts == 1 else "s"))
    if res.snapshot is not None and res.snapshot.argv:
        snap = res.snapshot
        ran = " (%s)" % snap.program if snap.program and snap.program != snap.argv[0] else ""
        lines.append("  %-12s %s%s: exit %s in %.0f ms" % ("snapshot", " ".join(snap.argv)[:60],
                                                           ran, snap.exit_code, snap.duration_ms))
        tail = step.output_tail(snap.output or "")
        if tail:
            lines.append("  %-12s its output ends:" % "")
            lines.extend("  %-12s | %s" % ("", line) for line in tail.split("\n"))
    for w in res.warnings:
        lines.append("  warning: %s" % w)
    for e in res.errors:
        lines.append("  error %s (%d): %s" % (e.code, e.number, e.message))
        lines.append("        -> %s" % e.action)
    return lines


def step_plan(snapshot_argv: Sequence[str]) -> dict[str, Any]:
    """What a run would run as the snapshot step, for the dry run."""
    if not snapshot_argv:
        return {"argv": [], "program": None, "problem": None, "warning": None}
    from . import step
    prog = step.find_program(snapshot_argv[0], os.environ.get("PATH"))
    return {"argv": list(snapshot_argv), "program": prog.path, "problem": prog.problem,
            "warning": prog.warning}


def _step_line(plan: dict[str, Any]) -> str:
    sp = plan.get("snapshot_step") or {"argv": []}
    if not plan["snapshot"]:
        return "snapshot step: NOT run (continueBackupOnFailure: false, several disks)"
    if not sp["argv"]:
        return "snapshot step: none given (an empty step: the quiesce alone)"
    cmd = " ".join(sp["argv"])
    if sp["problem"]:
        return "snapshot step: %s would NOT run: %s" % (cmd, sp["problem"])
    return "snapshot step: runs %s (program %s)" % (cmd, sp["program"])


def plan_lines(plan: dict[str, Any]) -> list[str]:
    """A dry run's plan in words: what a run would do, in order."""
    lines = ["  plan (configuration %s), in order:" % plan["config"]]

    def script(label: str, d: dict[str, Any] | None) -> None:
        if d is None:
            lines.append("    %s: none configured" % label)
        elif not d["runs"]:
            lines.append("    %s %s: not run: %s" % (label, d["path"], d["why_not"]))
        else:
            lines.append("    %s: %s (up to %d attempt%s, %gs each)" % (
                label, " ".join(d["runs_as"]), d["attempts"], "" if d["attempts"] == 1 else "s",
                d["timeout_s"]))

    script("pre-script", plan["pre_script"])
    for h in plan["hooks"]:
        lines.append("    hook %s freeze%s" % (h["path"], "" if h["runs"] else
                                               ": not run: %s" % h["why_not"]))
    fr = plan["freeze"]
    if not fr["enabled"]:
        lines.append("    freeze: disabled (fsFreezeEnabled: false)")
    elif fr["problems"]:
        lines.append("    freeze: fails (%s); what froze is thawed at once"
                     % "; ".join(fr["problems"]))
    elif fr["mounts"]:
        lines.append("    freeze, children before parents, at most %gs: %s"
                     % (fr["timeout_s"], ", ".join(fr["mounts"])))
    else:
        lines.append("    freeze: nothing to freeze")
    lines.append("    " + _step_line(plan))
    for h in reversed(plan["hooks"]):
        if h["runs"]:
            lines.append("    hook %s thaw" % h["path"])
    script("post-script", plan["post_script"])
    lines.append("  expected consistency: %s" % (plan["expected_consistency"] or "no snapshot"))
    return lines


def cmd_run(args: argparse.Namespace, snapshot_argv: list[str]) -> int:
    from . import cycle
    from .logbook import DEFAULT_LOG_FILE
    log_file = args.log_file if args.log_file is not None else DEFAULT_LOG_FILE
    res = cycle.run(config=args.config, snapshot=snapshot_argv or None, mounts=args.mount or None,
                    freeze_timeout=args.freeze_timeout, log_file=log_file or None,
                    dry_run=args.dry_run, metrics_file=args.metrics_file,
                    freeze_at=args.freeze_at)
    # the run is over: a stop signal now has nothing left to stop, and must not
    # cut its report short (blocked until exit, where a pending one is dropped)
    import signal
    import threading
    if threading.current_thread() is threading.main_thread():
        from .stop import STOP_SIGNALS
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    if res.plan is not None:
        res.plan["snapshot_step"] = sp = step_plan(snapshot_argv)
        if sp["warning"]:
            res.warnings.append(sp["warning"])
    if args.json:
        emit_json(res.to_dict())
    if res.plan is not None:
        err(*plan_lines(res.plan))
    err(*summarize(res))
    return res.exit_status


# -- check ----------------------------------------------------------------------

def cmd_check(args: argparse.Namespace) -> int:
    if args.azure:
        from .azure import check_azure
        return check_azure(args)
    from .plan import make_plan
    plan = make_plan(args.config)
    problems = [e.to_dict() for e in plan.problems()]
    report = {
        "ok": not problems,
        "config": plan.config_path,
        "config_found": plan.config is not None or plan.config_problem is not None,
        "problems": problems,
        "warnings": plan.warnings,
        "scripts": {
            "pre": plan.pre_check.path if plan.pre_check else None,
            "post": plan.post_check.path if plan.post_check else None,
            "pre_runs_as": list(plan.pre_check.argv_prefix) if plan.pre_check and plan.pre_check.ok else None,
            "post_runs_as": list(plan.post_check.argv_prefix) if plan.post_check and plan.post_check.ok else None,
        },
        "hooks": [h.name for h in plan.hooks],
    }
    if args.json:
        emit_json(report)
    lines = ["vmsnap check: configuration %s" % plan.config_path]
    for w in plan.warnings:
        lines.append("  warning: %s" % w)
    if plan.pre_check and plan.pre_check.ok:
        lines.append("  pre-script  runs as: %s" % " ".join(plan.pre_check.argv_prefix))
    if plan.post_check and plan.post_check.ok:
        lines.append("  post-script runs as: %s" % " ".join(plan.post_check.argv_prefix))
    for h in plan.hooks:
        lines.append("  hook %s" % h.name)
    for p in problems:
        lines.append("  %s (%d): %s" % (p["code"], p["number"], p["message"]))
        lines.append("        -> %s" % p["action"])
    lines.append("  all good" if not problems else "  %d problem%s found" % (
        len(problems), "" if len(problems) == 1 else "s"))
    err(*lines)
    return 0 if not problems else 1


# -- mounts ---------------------------------------------------------------------

def cmd_mounts(args: argparse.Namespace) -> int:
    try:
        return _print_mounts(args)
    except BrokenPipeError:
        # the reader went away (`vmsnap mounts | head -1`): stop quietly, as coreutils do,
        # and let no flush at exit complain about the closed pipe
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + 13   # what a shell shows for a writer killed by SIGPIPE


def _print_mounts(args: argparse.Namespace) -> int:
    from .disks import disks_of
    from .plan import make_plan
    plan = make_plan(args.config, mounts=args.mount or None, with_hooks=False)
    sel = plan.selection
    if args.json:
        d = sel.to_dict()
        d["one_disk"] = plan.one_disk
        d["disks"] = sorted(disks_of([c.mount for c in sel.eligible]))
        emit_json(d)
        return 0
    out = sys.stdout
    out.write("would freeze (level 0 first, thawed in reverse):\n")
    for c in sel.eligible:
        out.write("  %-30s %-8s %-8s level %d\n" % (c.mount.mountpoint, c.mount.fstype,
                                                    c.mount.device, c.level))
    if not sel.eligible:
        out.write("  (nothing)\n")
    out.write("left out:\n")
    for c in sel.skipped:
        out.write("  %-30s %-10s %s\n" % (c.mount.mountpoint, c.mount.fstype, c.reason))
    for p in sel.missing:
        out.write("  %-30s %-10s %s\n" % (p, "-", "not a mount point"))
    out.write("one disk: %s\n" % ("yes" if plan.one_disk else "no"))
    out.flush()   # inside cmd_mounts' guard: a closed pipe shows here, not at exit
    return 0


# -- freeze / thaw --------------------------------------------------------------

def cmd_freeze(args: argparse.Namespace) -> int:
    from .held import freeze_and_hold
    held = freeze_and_hold(args.config, args.mount, args.timeout)
    if args.json:
        emit_json(held.to_dict())
    if held.status == "frozen":
        if not args.json:
            print(held.session, flush=True)   # for `vmsnap thaw --session`
        err("vmsnap: %d filesystem(s) frozen, session %s; the guardian (pid %s) thaws them at "
            "`vmsnap thaw --session %s` or in %gs" % (len(held.mounts), held.session,
                                                     held.guardian_pid, held.session,
                                                     args.timeout))
        return 0
    err("vmsnap: freeze failed, nothing left frozen", *("  %s" % e for e in held.errors))
    return 1


def cmd_thaw_session(args: argparse.Namespace) -> int:
    from .held import thaw_session
    out = thaw_session(args.session)
    if args.json:
        emit_json(out.to_dict())
    err("vmsnap: session %s %s: %s" % (out.session, out.status, out.message))
    for r in out.filesystems:
        if r.mountpoint is not None:
            err("  %s: %s" % (r.mountpoint, r.outcome))
    return 0 if out.ok else 1


def cmd_thaw(args: argparse.Namespace) -> int:
    if args.session is not None:
        return cmd_thaw_session(args)
    from .errors import BusyError, CoreUnavailable
    from .freeze import thaw_recorded
    try:
        results = thaw_recorded(force=args.force)
    except (CoreUnavailable, BusyError) as exc:
        if args.json:
            emit_json({"status": "refused" if isinstance(exc, BusyError) else "failed",
                       "filesystems": [], "records": [], "error": str(exc)})
        err("vmsnap: %s" % exc)
        return 1
    fs = [r for r in results if r.mountpoint is not None]
    records = [r for r in results if r.mountpoint is None]   # about a record itself
    failed = [r for r in results if r.outcome.startswith("failed")]
    if args.json:
        emit_json({"status": "failed" if failed else ("thawed" if fs else "nothing"),
                   "filesystems": [{"mountpoint": r.mountpoint, "outcome": r.outcome}
                                   for r in fs],
                   "records": [{"record": r.record, "outcome": r.outcome} for r in records]})
    if not fs:
        err("vmsnap: nothing recorded as frozen")
    for r in fs:
        err("  %s: %s" % (r.mountpoint, r.outcome))
    for r in records:
        err("  record %s: %s" % (r.record, r.outcome))
    return 1 if failed else 0


# -- demo / bench ---------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    from .devtools import demo
    return demo.main(keep=args.keep, json_out=args.json)


def cmd_bench(args: argparse.Namespace) -> int:
    from .devtools import bench
    return bench.main(mounts=args.mount, rounds=args.rounds, json_out=args.json, yes=args.yes,
                      load=args.load)


# -- parser -----------------------------------------------------------------------

def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with COMMAND (the command word found in the
    arguments, "" for none) only that command's options are added, and only
    what they need is imported."""
    def want(name: str) -> bool:
        return command is None or command == name

    p = argparse.ArgumentParser(prog="vmsnap", formatter_class=_Formatter, description=(
        "Application-consistent snapshots: pre-script, parallel filesystem freeze with a "
        "guaranteed thaw, snapshot step, thaw, post-script."), parents=[_verbosity(True)])
    p.add_argument("-V", "--version", action="version", version="vmsnap %s" % __version__,
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND",
                           help="what to do (`vmsnap COMMAND --help` for its options)")
    sub.required = True
    # every command takes -q/-v too: its parser is made with them as a parent
    sub.add_parser = _with_parents(sub.add_parser, _verbosity(False))  # type: ignore[method-assign]

    def common(sp: argparse.ArgumentParser, config: bool = True, mount: bool = True) -> None:
        from .config import DEFAULT_CONFIG_PATH
        if config:
            sp.add_argument("--config", metavar="F", help="configuration file (default: "
                            "$VMSNAP_CONFIG or %s)" % DEFAULT_CONFIG_PATH)
        if mount:
            sp.add_argument("--mount", metavar="M", action="append",
                            help="freeze only this mount point (repeatable)")
        sp.add_argument("--json", action="store_true", help=JSON_HELP)

    r = sub.add_parser("run", help="the whole cycle; SNAPSHOT_CMD after -- runs while frozen",
                       description="Pre-script, hooks, freeze, the snapshot step, thaw, hooks, "
                       "post-script. The snapshot command comes last, after --; it is looked "
                       "up only in root-controlled directories (or give its full path) and "
                       "gets VMSNAP_PHASE=snapshot and VMSNAP_FROZEN_MOUNTS.")
    if want("run"):
        _run_options(r, common)
    c = sub.add_parser("check", help="validate configuration, permissions and scripts")
    if want("check"):
        common(c, mount=False)
        c.add_argument("--azure", action="store_true", help="migration report: every way Azure's "
                       "own framework would behave differently with this configuration and these "
                       "scripts (exit 1 if there is any; vmsnap-only fields, which Azure ignores, "
                       "are listed but do not count)")
    m = sub.add_parser("mounts", help="what a run would freeze, and what it leaves out and why")
    if want("mounts"):
        common(m)
    f = sub.add_parser("freeze", help="freeze and return; the guardian holds until thaw/timeout")
    if want("freeze"):
        common(f)
        f.add_argument("--timeout", type=_positive, required=True, metavar="S",
                       help="the guardian thaws after S seconds at the latest")
    t = sub.add_parser("thaw", help="thaw what `vmsnap freeze` or a crashed run left frozen")
    t.add_argument("--force", action="store_true",
                   help="also thaw a run in progress (it then reports an early thaw)")
    t.add_argument("--session", metavar="ID",
                   help="end only the freeze `vmsnap freeze` printed ID for: exit 0 when it "
                   "still held and is thawed now, 1 when it had expired (its deadline, another "
                   "thaw) or is unknown; never anyone else's freeze")
    t.add_argument("--json", action="store_true", help=JSON_HELP)
    d = sub.add_parser("demo", help="the built-in demonstration on a sandbox filesystem")
    d.add_argument("--keep", action="store_true", help="keep the sandbox for inspection")
    d.add_argument("--json", action="store_true", help=JSON_HELP)
    k = sub.add_parser("hook", help="be the freeze hook of an agent: qemu-ga, vmware, gce, dlm")
    if want("hook"):
        from . import agents
        agents.add_arguments(k)
    b = sub.add_parser("bench", help="measure the freeze window, sequential vs parallel")
    b.add_argument("--mount", metavar="M", action="append",
                   help="measure this mount point (repeatable; default: what a run would freeze)")
    b.add_argument("--rounds", type=int, default=20, metavar="N",
                   help="freeze/thaw rounds per method (default 20)")
    b.add_argument("--json", action="store_true", help=JSON_HELP)
    b.add_argument("--yes", action="store_true", help="agree to freeze / if it is selected")
    b.add_argument("--load", choices=("none", "light", "streaming"), default="none",
                   help="write meanwhile on each filesystem (streaming: a 256 MiB rewrite, "
                        "light: 8 MiB) and report the worst write() a 1 ms probe saw")
    return p


def _run_options(r: argparse.ArgumentParser,
                 common: Callable[[argparse.ArgumentParser], None]) -> None:
    from .logbook import DEFAULT_LOG_FILE
    common(r)
    r.add_argument("snapshot_cmd", nargs="*", metavar=SNAPSHOT_METAVAR,
                   help="the command that takes the snapshot while the filesystems are frozen, "
                   "with its arguments, after -- (none: an empty step, to test the quiesce)")
    r.add_argument("--freeze-timeout", type=_positive, metavar="S",
                   help="hard cap on the freeze, seconds (default: config or 60)")
    r.add_argument("--dry-run", action="store_true",
                   help="check and plan; run no script, freeze nothing")
    r.add_argument("--freeze-at", metavar="F",
                   help="after the pre-script, sync, write F.armed and freeze at the instant "
                   "F gives ('T LATEST', seconds since the epoch; not at all after LATEST, or "
                   "if F does not come within the freeze timeout): many hosts freezing together")
    r.add_argument("--log-file", metavar="F", help="log file (default %s; '' for none)"
                   % DEFAULT_LOG_FILE)
    r.add_argument("--metrics-file", metavar="F",
                   help="after the run, write Prometheus textfile metrics to F (a *.prom file in "
                   "node_exporter's textfile directory; default: the config's metricsFile; "
                   "'' for none)")


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``, without importing shutil (and
    with it zlib, bz2 and lzma) on every start: $COLUMNS, else stdout's
    terminal, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        out = sys.__stdout__   # None, closed, detached or no terminal: 80
        try:
            columns = (os.get_terminal_size(out.fileno()).columns if out is not None else 0) or 80
        except (AttributeError, ValueError, OSError):
            columns = 80
    return columns


class _Formatter(argparse.HelpFormatter):
    """argparse's own, its width found as argparse finds it (argparse makes a
    formatter for every option it adds, and imports shutil for its width)."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _terminal_columns() - 2 if width is None else width)


def _verbosity(top: bool) -> argparse.ArgumentParser:
    """-q/-v, accepted before and after the command (after it, only what
    is given overrides what was given before)."""
    v = argparse.ArgumentParser(add_help=False, formatter_class=_Formatter)
    extra: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    group = v.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="print only errors on stderr",
                       **extra)
    group.add_argument("-v", "--verbose", action="store_true",
                       help="also print the log's records on stderr", **extra)
    return v


def _with_parents(add_parser: Callable[..., argparse.ArgumentParser],
                  parent: argparse.ArgumentParser) -> Callable[..., argparse.ArgumentParser]:
    def add(name: str, **kw: Any) -> argparse.ArgumentParser:
        kw.setdefault("parents", []).append(parent)
        kw.setdefault("formatter_class", _Formatter)
        return add_parser(name, **kw)
    return add


def _positive(text: str) -> float:
    from . import config as config_mod
    try:
        return config_mod.seconds_option(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    snapshot_argv: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, snapshot_argv = argv[:i], argv[i + 1:]
    # the command word: top-level options (-q, -v, -V, -h) take no value
    parser = build_parser(next((a for a in argv if not a.startswith("-")), ""))
    args = parser.parse_args(argv)
    if snapshot_argv and args.command != "run":
        err("error: vmsnap: only `run` takes a snapshot command after --")
        return EXIT_USAGE
    if getattr(args, "snapshot_cmd", None):
        err("error: vmsnap run: %r: give the snapshot command after -- (vmsnap run [OPTIONS] "
            "-- %s)" % (args.snapshot_cmd[0], " ".join(args.snapshot_cmd)))
        return EXIT_USAGE
    if args.quiet and args.verbose:
        err("error: vmsnap: -q and -v exclude each other")
        return EXIT_USAGE
    _quiet.update(on=args.quiet, lines=[])
    if args.verbose:
        _echo_log()
    status = 1   # what an exception leaves
    try:
        status = _dispatch(args, snapshot_argv)
    finally:
        if _quiet["on"]:
            _quiet_end(status)
    return status


def _dispatch(args: argparse.Namespace, snapshot_argv: list[str]) -> int:
    handlers = {"check": cmd_check, "mounts": cmd_mounts, "freeze": cmd_freeze,
                "thaw": cmd_thaw, "demo": cmd_demo, "bench": cmd_bench}
    if args.command in NEEDS_ROOT and os.geteuid() != 0 and not getattr(args, "dry_run", False):
        err("error: vmsnap %s needs root: it freezes filesystems and runs root's scripts "
            "(try: sudo vmsnap %s)" % (args.command, args.command))
        return 1
    try:
        if args.command == "run":
            return cmd_run(args, snapshot_argv)
        if args.command == "hook":
            from . import agents
            return agents.main(args)
        return handlers[args.command](args)
    except KeyboardInterrupt:
        err("error: vmsnap: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
