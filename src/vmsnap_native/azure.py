"""``vmsnap check --azure``: every way Azure's own framework would behave
differently with this configuration and these scripts.

What Azure does is modelled here from reading its VMBackup extension
(azure-linux-extensions: ScriptRunner.py, PluginHost.py, handle.py; run by
Python 3 on current images); none of its code is used.  Its config is read by
Python's ``json`` (NaN allowed, a duplicate key's last value wins), the values
are used as they come (no type checks, so a string is "true" wherever a
boolean is tested), the timeout is ``min(value, 1800)``, each script is
checked only for existence, its own mode's group/other digits and a root
owner, and then always run as ``sh SCRIPT PARAMS...``.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import AZURE_TIMEOUT_CAP, AzureDifference, Config, parse_config, read_config_file
from .errors import ConfigError

if TYPE_CHECKING:
    from argparse import Namespace

    from .policy import ScriptCheck

AZURE_CODE_NAMES = {
    302: "Pre-ScriptNotFound", 303: "Post-ScriptNotFound",
    304: "PluginhostConfigParsing", 305: "IncorrectJSONConfigFile",
    306: "InsufficientPermissionforPre-Script", 307: "InsufficientPermissionforPost-Script",
}
SCRIPT_READ_LIMIT = 1024 * 1024
# differences that are vmsnap's own fields, which Azure reads past: the same
# file behaves the same there, only without the extension (exit status 0)
EXTENSION_TOPICS = frozenset({"vmsnap-only"})


@dataclass
class AzureConfigView:
    """What Azure makes of the configuration bytes."""

    code: int = 0            # 0: loaded; 304 or 305: rejected (scripts skipped)
    why: str = ""
    doc: dict[str, Any] | None = None  # the document as Azure reads it, when it loads

    @property
    def name(self) -> str:
        return AZURE_CODE_NAMES.get(self.code, "success")


def _py_type_error(v: object) -> bool:
    """Whether comparing V with a number raises (Python 3): everything but numbers and booleans."""
    return not isinstance(v, (int, float))


def azure_config_view(data: bytes) -> AzureConfigView:
    """Azure's verdict on a configuration file's bytes, step by step as its
    ScriptRunner reads it: 305 for what its own parser catches (bad JSON, a
    missing location, a poll time int() refuses), 304 for what escapes to the
    plugin host (a wrong type that raises elsewhere)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return AzureConfigView(305, "the file is not UTF-8 text")
    try:
        doc = json.loads(text)
    except RecursionError:
        return AzureConfigView(304, "nested too deeply for its parser")
    except ValueError as exc:   # JSONDecodeError, a BOM, an integer of 4300+ digits
        return AzureConfigView(305, "its JSON parser fails: %s" % str(exc).split(":")[0])
    if not isinstance(doc, dict):
        return AzureConfigView(304, "the top level is not a JSON object")
    if "timeoutInSeconds" in doc and _py_type_error(doc["timeoutInSeconds"]):
        return AzureConfigView(304, "timeoutInSeconds is not a number (its min() with 1800 raises)")
    for name in ("preScriptLocation", "postScriptLocation"):
        if name not in doc:
            return AzureConfigView(305, "%s is missing" % name)
    if "ScriptsExecutionPollTimeSeconds" in doc:
        poll = doc["ScriptsExecutionPollTimeSeconds"]
        if isinstance(poll, str):
            if not re.fullmatch(r"\s*[-+]?[0-9_]+\s*", poll):
                return AzureConfigView(305, "ScriptsExecutionPollTimeSeconds is not an integer")
        elif isinstance(poll, float) and math.isnan(poll):
            return AzureConfigView(305, "ScriptsExecutionPollTimeSeconds is NaN")
        elif isinstance(poll, float) and math.isinf(poll) or not isinstance(poll, (int, float)):
            return AzureConfigView(304, "ScriptsExecutionPollTimeSeconds is not a number")
    for name in ("preScriptLocation", "postScriptLocation"):
        if doc[name] is None or isinstance(doc[name], (list, dict)):
            return AzureConfigView(304, "%s is not a string (its file test raises)" % name)
    return AzureConfigView(0, "", doc)


def _azure_script_code(path: object, role: str) -> int:
    """Azure's check of one script: exists, no group/other digit in its mode, owned by root."""
    tag = 0 if role == "pre" else 1
    # a relative path is looked up from the extension's own directory: nothing there
    if not isinstance(path, str) or "\0" in path or not path.startswith("/"):
        return 302 + tag
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return 302 + tag
    if not stat.S_ISREG(st.st_mode):
        return 302 + tag
    if st.st_mode & 0o077 or st.st_uid != 0:
        return 306 + tag
    return 0


def _unsafe_directory(path: str) -> str | None:
    """A directory above PATH (as it resolves) that vmsnap's policy refuses and Azure ignores."""
    real = os.path.realpath(path)
    d = os.path.dirname(real)
    while True:
        try:
            st = os.stat(d)
        except OSError:
            return None
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid != 0:
            return "%s is owned by uid %d" % (d, st.st_uid)
        if mode & 0o022 and not mode & stat.S_ISVTX:
            return "%s is writable by group or others (mode %o)" % (d, mode)
        if d == "/":
            return None
        d = os.path.dirname(d)


# Constructs dash (Debian's and Ubuntu's sh) does not know: (pattern, what it is).
BASHISMS = [
    (re.compile(r"(^|[\s;&|(!])\[\[\s"), "`[[ ... ]]` is not a command"),
    (re.compile(r"^\s*function\s+[A-Za-z_][\w-]*"), "`function name` is a syntax error"),
    (re.compile(r"(^|[\s;&|])[A-Za-z_]\w*(\[[^]]*\])?=\("), "an array assignment is a syntax error"),
    (re.compile(r"\$\{#?[A-Za-z_]\w*\[[^]]*\]\}"), "an array subscript is a bad substitution"),
    (re.compile(r"(^|[;&|]\s*|\b(then|do|else)\s+)(source)\s"),
     "`source` is not a command (write `.`)"),
    (re.compile(r"(^|[\s;&|!])(\[|test)\s[^]\n]*\s==\s"), "`==` in [ ] is an error (write `=`)"),
    (re.compile(r"<<<"), "a here-string `<<<` is a syntax error"),
    (re.compile(r"\$\(<"), "`$(< file)` is empty"),
    (re.compile(r"(^|\s)&>"), "`&>` sends the command to the background"),
    (re.compile(r"(^|[\s;&|])(declare|typeset|readarray|mapfile)\s"),
     "`declare`/`typeset`/`readarray`/`mapfile` is not a command"),
    (re.compile(r"\$\{[A-Za-z_]\w*//?[^}]*/"), "`${var/pattern/replacement}` is a bad substitution"),
    (re.compile(r"\$\{[A-Za-z_]\w*:[0-9]"), "`${var:offset}` is a bad substitution"),
    (re.compile(r"(^|[;&|]\s*)echo\s+-e\s"), "`echo -e` prints the -e"),
]
_HEREDOC = re.compile(r"<<(-?)\s*(['\"]?)([A-Za-z_]\w*)\2")


def bashisms(text: str) -> list[tuple[int, str]]:
    """(line number, what) of each bash-only construct in TEXT (comments and
    here-document bodies skipped: SQL fed to a client is not shell)."""
    found = []
    ending: tuple[str, bool] | None = None   # (delimiter, tabs allowed) of the here-document being skipped
    for n, line in enumerate(text.splitlines(), 1):
        if ending is not None:
            if (line.lstrip("\t") if ending[1] else line).rstrip("\r") == ending[0]:
                ending = None
            continue
        if line.lstrip().startswith("#"):
            continue
        for pattern, what in BASHISMS:
            if pattern.search(line):
                found.append((n, what))
        heredoc = _HEREDOC.search(line.replace("<<<", "   "))
        if heredoc:
            ending = (heredoc.group(3), heredoc.group(1) == "-")
    return found


def _shebang(head: bytes) -> str | None:
    if not head.startswith(b"#!"):
        return None
    return head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").strip()


def _program(interpreter: str) -> str:
    """The program a #! line runs: `/usr/bin/env bash` -> bash ("" for an empty line)."""
    words = interpreter.replace("\r", "").split()
    if not words:
        return ""
    prog = os.path.basename(words[0])
    if prog == "env" and len(words) > 1:
        prog = os.path.basename(words[1])
    return prog


def _is_sh(interpreter: str) -> bool:
    return _program(interpreter) in ("", "sh")


def script_differences(role: str, path: Any, check: ScriptCheck | None) -> list[AzureDifference]:
    """How Azure would treat one configured script differently (CHECK: vmsnap's policy check)."""
    label = "%s-script %s" % (role, path)
    out = []
    azure_code = _azure_script_code(path, role)
    vmsnap_code = None if check is None or check.problem is None else check.problem.code
    unsafe = _unsafe_directory(path) if isinstance(path, str) and path.startswith("/") else None
    if azure_code == 0 and vmsnap_code and unsafe:
        out.append(AzureDifference(
            "unsafe-directory", label,
            "run it anyway (it checks only the script's own mode and owner)",
            "refuses it (%s): directory %s" % (vmsnap_code, unsafe)))
    elif (AZURE_CODE_NAMES.get(azure_code) or None) != vmsnap_code:
        out.append(AzureDifference(
            "script-check", label,
            ("report %s (%d)" % (AZURE_CODE_NAMES[azure_code], azure_code)) if azure_code
            else "run it (it checks only that it exists, its mode's group/other digits and a "
                 "root owner)",
            "reports %s" % vmsnap_code if vmsnap_code else "runs it"))
    if azure_code != 0:
        return out
    try:
        with open(path, "rb") as f:
            body = f.read(SCRIPT_READ_LIMIT)
    except OSError:
        return out
    interpreter = _shebang(body)
    direct = check is not None and check.ok and tuple(check.argv_prefix) == (path,)
    vmsnap_runs = ("runs it with %s (its #! line)" % interpreter) if direct and interpreter \
        else "runs it with /bin/sh too"
    if interpreter is not None and not _is_sh(interpreter):
        shell = _program(interpreter)
        fails = "" if shell in ("bash", "ksh", "zsh", "dash") else \
            ": sh cannot run a %s program" % shell
        out.append(AzureDifference(
            "shebang-ignored", label,
            "run it as `sh %s`, ignoring its `#!%s` line%s" % (path, interpreter, fails),
            vmsnap_runs))
    if b"\r\n" in body:
        out.append(AzureDifference(
            "crlf", label,
            "run it with sh, which reads a carriage return at the end of every line "
            "(`exit 0\\r` is an error, a command `ls\\r` is not found)",
            "reports it in `vmsnap check` (Windows line endings)"))
    text = body.decode("utf-8", "replace").replace("\r\n", "\n")
    bash_ok = direct and interpreter is not None and not _is_sh(interpreter)
    for line, what in bashisms(text):
        out.append(AzureDifference(
            "bashism", "%s line %d" % (label, line),
            "run it with sh: where sh is dash (Debian, Ubuntu), %s" % what,
            "runs it with %s: it works" % interpreter if bash_ok
            else "runs it with /bin/sh too: the same failure where sh is dash"))
    return out


def config_differences(data: bytes, path: str) -> tuple[
        AzureConfigView, Config | None, ConfigError | None, list[AzureDifference]]:
    """(Azure's view, vmsnap's error or None, the differences) for the configuration bytes."""
    view = azure_config_view(data)
    cfg: Config | None
    error: ConfigError | None
    try:
        cfg = parse_config(data, path)
        error, diffs = None, list(cfg.azure_differences)
    except ConfigError as exc:
        cfg, error = None, exc
        diffs = list(getattr(exc, "azure_differences", []))
    if view.code == 0 and error is not None:
        diffs.append(AzureDifference(
            "config-rejected", "configuration",
            "load it and run the scripts", "rejects it (IncorrectJSONConfigFile, 305): %s; "
            "scripts skipped" % str(error).split(": ", 1)[-1]))
    elif view.code != 0 and error is None:
        diffs.append(AzureDifference(
            "config-accepted", "configuration",
            "reject it (%s, %d): %s; scripts skipped, a filesystem-consistent backup"
            % (view.name, view.code, view.why), "loads it"))
    elif view.code not in (0, 305):
        diffs.append(AzureDifference(
            "error-code", "configuration", "report %s (%d): %s" % (view.name, view.code, view.why),
            "reports IncorrectJSONConfigFile (305)"))
    return view, cfg, error, diffs


def report(config: str | None = None) -> dict[str, Any]:
    """The migration report for the configuration at CONFIG (or the default path)."""
    from . import cycle  # cycle imports much; check --azure is its only user here
    plan = cycle.make_plan(config)
    path = plan.config_path
    assert path is not None   # make_plan names the file it looked for
    out: dict[str, Any] = {"config": path, "found": False, "azure": None, "differences": [],
           "behaves_differently": False}
    try:
        got = read_config_file(path)
    except ConfigError as exc:
        out.update(found=True, unreadable=str(exc), behaves_differently=None)  # cannot tell
        return out
    if got is None:
        return out
    out["found"] = True
    view, cfg, error, diffs = config_differences(got[0], path)
    out["azure"] = {"config_code": view.code, "config_error": view.name if view.code else None,
                    "why": view.why or None}
    if view.doc is not None:
        t = view.doc.get("timeoutInSeconds", 10)
        if isinstance(t, (int, float)):
            out["azure"]["timeout"] = min(t, AZURE_TIMEOUT_CAP)
    if view.code == 0:
        doc = view.doc
        assert doc is not None   # Azure loaded it
        for role in ("pre", "post"):
            chk = plan.pre_check if role == "pre" else plan.post_check
            diffs.extend(script_differences(role, doc["%sScriptLocation" % role], chk))
    if plan.hooks:
        diffs.append(AzureDifference(
            "hooks", plan.settings.hooks_directory,
            "not run them: it has no hooks directory",
            "runs %d hook%s (%s) around the freeze" % (
                len(plan.hooks), "" if len(plan.hooks) == 1 else "s",
                ", ".join(h.name for h in plan.hooks))))
    out["differences"] = [dict(d.to_dict(), extension=d.topic in EXTENSION_TOPICS)
                          for d in diffs]
    out["behaves_differently"] = any(not d["extension"] for d in out["differences"])
    return out


def check_azure(args: Namespace) -> int:
    """``vmsnap check --azure [--config F] [--json]``: 0 when Azure would do
    the same with this file (vmsnap-only fields, which Azure ignores, are
    listed but do not count), 1 when it would behave differently."""
    rep = report(args.config)
    if args.json:
        sys.stdout.write(json.dumps(rep, indent=2) + "\n")
        sys.stdout.flush()
    lines = ["vmsnap check --azure: configuration %s" % rep["config"]]
    if not rep["found"]:
        lines.append("  no configuration file: Azure and vmsnap both skip the scripts")
    elif rep.get("unreadable"):
        lines.append("  cannot read it: %s" % rep["unreadable"])
    elif rep["azure"]["config_code"]:
        lines.append("  Azure would reject it: %s (%d): %s" % (
            rep["azure"]["config_error"], rep["azure"]["config_code"], rep["azure"]["why"]))
    for d in rep["differences"]:
        lines.append("  [%s] %s:" % (d["topic"], d["where"]))
        lines.append("      Azure would %s" % d["azure"])
        lines.append("      vmsnap %s" % d["vmsnap"])
    n = sum(1 for d in rep["differences"] if not d["extension"])
    ext = len(rep["differences"]) - n
    extensions = "%d vmsnap-only field%s, which Azure ignores" % (ext, "" if ext == 1 else "s")
    if n:
        lines.append("  %d difference%s from Azure%s" % (n, "" if n == 1 else "s",
                                                         "; also " + extensions if ext else ""))
    elif ext:
        lines.append("  Azure would do the same, without the extensions: %s" % extensions)
    else:
        lines.append("  no difference: Azure would do the same")
    print("\n".join(lines), file=sys.stderr)
    return 1 if n or rep.get("unreadable") else 0
