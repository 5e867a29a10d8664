"""The configuration file: Azure's VMSnapshotScriptPluginConfig.json plus
vmsnap's own optional fields (SPEC §1).

Reading is bounded and strict: invalid UTF-8, duplicate keys, NaN/Infinity,
deep nesting, wrong types and out-of-bound numbers are all ``ConfigError``
(IncorrectJSONConfigFile) naming the field, never a traceback.

Forms that Azure's ScriptRunner accepts and whose meaning is unambiguous
("false" for false, 0/1, "2" for 2) are accepted with their real meaning and
a warning that says what Azure would have done with them; each such
difference is also kept as an ``AzureDifference`` for ``vmsnap check --azure``.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat

from ._record import Frozen, Record
from .errors import ConfigError

TYPE_CHECKING = False   # true for type checkers; `typing` is not imported for it
if TYPE_CHECKING:
    from typing import Any, Callable

DEFAULT_CONFIG_PATH = "/etc/azure/VMSnapshotScriptPluginConfig.json"
CONFIG_ENV = "VMSNAP_CONFIG"
DEFAULT_HOOKS_DIRECTORY = "/etc/vmsnap/hooks.d"
MAX_CONFIG_BYTES = 1024 * 1024
# Bounds that keep every deadline computable (a 1e10 s timeout overflows the core's ns clock).
MAX_SECONDS = 30 * 24 * 3600
# the presync's per-device dirty cap (presyncDirtyCapMiB), in MiB
DEFAULT_DIRTY_CAP_MIB = 64
MIN_DIRTY_CAP_MIB = 16
MAX_DIRTY_CAP_MIB = 1 << 20
MAX_RETRIES = 1000
# Azure's PluginHost caps each script's timeout here (VMSnapshotPluginHost.conf, documented).
AZURE_TIMEOUT_CAP = 1800
# ScriptRunner's own value when timeoutInSeconds is absent (Microsoft's README says 30).
AZURE_DEFAULT_TIMEOUT = 10


class AzureDifference(Frozen):
    """One way Azure's ScriptRunner would behave differently from vmsnap."""

    __slots__ = ("topic", "where", "azure", "vmsnap", "warn")
    topic: str       # short key: "string-boolean", "timeout-cap", ...
    where: str       # the field (or script) concerned
    azure: str       # what Azure would do
    vmsnap: str      # what vmsnap does
    warn: bool       # also a warning on every check/run (else only in check --azure)

    def __init__(self, topic: str, where: str, azure: str, vmsnap: str,
                 warn: bool = True) -> None:
        object.__setattr__(self, "topic", topic)
        object.__setattr__(self, "where", where)
        object.__setattr__(self, "azure", azure)
        object.__setattr__(self, "vmsnap", vmsnap)
        object.__setattr__(self, "warn", warn)

    def warning(self) -> str:
        return "%s: %s; Azure would %s" % (self.where, self.vmsnap, self.azure)

    def to_dict(self) -> dict[str, str]:
        return {"topic": self.topic, "where": self.where, "azure": self.azure,
                "vmsnap": self.vmsnap}


class Config(Record):
    """The settings of one configuration file (or the defaults)."""

    __slots__ = ("path", "plugin_name", "pre_script", "post_script", "pre_params",
                 "post_params", "pre_retries", "post_retries", "timeout", "continue_on_failure",
                 "fs_freeze_enabled", "freeze_timeout", "mounts_to_skip", "mounts_to_freeze",
                 "hooks_directory", "expedite_rcu", "metrics_file", "dirty_cap_mib", "presync_gentle",
                 "warnings", "azure_differences")
    path: str | None
    plugin_name: str
    pre_script: str | None
    post_script: str | None
    pre_params: list[str]
    post_params: list[str]
    pre_retries: int
    post_retries: int
    timeout: float
    continue_on_failure: bool
    fs_freeze_enabled: bool
    freeze_timeout: float
    mounts_to_skip: list[str]
    mounts_to_freeze: list[str] | None   # None: every eligible filesystem; []: none
    hooks_directory: str
    expedite_rcu: bool
    metrics_file: str | None   # Prometheus textfile written after each run
    dirty_cap_mib: int   # per-device dirty limit in the presync; 0: none
    presync_gentle: bool   # paced writeback while the pre-script runs (gentle.py)
    warnings: list[str]
    azure_differences: list[AzureDifference]

    # the lists default to a new empty list each (None given: the same)
    def __init__(self, path: str | None = None, plugin_name: str = "ScriptRunner",
                 pre_script: str | None = None, post_script: str | None = None,
                 pre_params: list[str] | None = None, post_params: list[str] | None = None,
                 pre_retries: int = 0, post_retries: int = 0, timeout: float = 30.0,
                 continue_on_failure: bool = True, fs_freeze_enabled: bool = True,
                 freeze_timeout: float = 60.0, mounts_to_skip: list[str] | None = None,
                 mounts_to_freeze: list[str] | None = None,
                 hooks_directory: str = DEFAULT_HOOKS_DIRECTORY, expedite_rcu: bool = True,
                 metrics_file: str | None = None, dirty_cap_mib: int = DEFAULT_DIRTY_CAP_MIB,
                 presync_gentle: bool = True,
                 warnings: list[str] | None = None,
                 azure_differences: list[AzureDifference] | None = None) -> None:
        self.path = path
        self.plugin_name = plugin_name
        self.pre_script = pre_script
        self.post_script = post_script
        self.pre_params = [] if pre_params is None else pre_params
        self.post_params = [] if post_params is None else post_params
        self.pre_retries = pre_retries
        self.post_retries = post_retries
        self.timeout = timeout
        self.continue_on_failure = continue_on_failure
        self.fs_freeze_enabled = fs_freeze_enabled
        self.freeze_timeout = freeze_timeout
        self.mounts_to_skip = [] if mounts_to_skip is None else mounts_to_skip
        self.mounts_to_freeze = mounts_to_freeze
        self.hooks_directory = hooks_directory
        self.expedite_rcu = expedite_rcu
        self.metrics_file = metrics_file
        self.dirty_cap_mib = dirty_cap_mib
        self.presync_gentle = presync_gentle
        self.warnings = [] if warnings is None else warnings
        self.azure_differences = [] if azure_differences is None else azure_differences

    @property
    def has_scripts(self) -> bool:
        return self.pre_script is not None


def json_type(v: object) -> str:
    """The JSON name of a parsed value's type (messages never say NoneType or list)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def describe(v: object) -> str:
    """A value as the user wrote it, with its JSON type where that helps."""
    kind = json_type(v)
    if kind in ("array", "object"):
        return "an %s" % kind
    text = json.dumps(v)
    text = text if len(text) <= 60 else text[:57] + "..."
    if kind == "string":
        return "the string %s" % text
    return text


class _Bad(Exception):
    """A value that does not fit; the text says what was wanted."""


class _Found:
    """What the converters learn on the way: Azure differences, plain notes."""

    __slots__ = ("diffs", "notes")

    def __init__(self) -> None:
        self.diffs: list[AzureDifference] = []
        self.notes: list[str] = []


_NUMBER_TEXT = re.compile(r"\s*[0-9]+(\.[0-9]+)?\s*\Z")
_INTEGER_TEXT = re.compile(r"\s*[0-9]+\s*\Z")


def _text(v: str) -> str:
    """A string a program can receive: no NUL byte, no lone surrogate."""
    if "\0" in v:
        raise _Bad("without a NUL byte")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise _Bad("valid Unicode text (it holds a lone surrogate such as \\ud800, "
                   "which no program can receive)") from None
    return v


def _string(v: object, name: str, found: _Found) -> str:
    if not isinstance(v, str):
        raise _Bad("a string")
    return _text(v)


def _full_path(v: object, name: str, found: _Found) -> str:
    if not isinstance(v, str):
        raise _Bad("a string (a full path)")
    if not v.startswith("/"):
        raise _Bad("a full path (starting with /)")
    return _text(v)


def _string_list(v: object, name: str, found: _Found) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise _Bad("an array of strings")
    return [_text(x) for x in v]


def _params(v: object, name: str, found: _Found) -> list[str]:
    """Strings; a number is passed as Python's str() of it, exactly as Azure does."""
    if not isinstance(v, list):
        raise _Bad("an array of strings")
    out: list[str] = []
    for i, x in enumerate(v):
        if isinstance(x, str):
            out.append(_text(x))
        elif isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
            out.append(str(x))
            found.notes.append("%s[%d]: the number %s is passed as the argument %r, as Azure passes it; "
                         "write it as a string" % (name, i, json.dumps(x), str(x)))
        else:
            raise _Bad("an array of strings (item %d is %s)" % (i, describe(x)))
    return out


def _azure_bool_string(name: str, meaning: bool) -> str:
    """What Azure does with a string in a boolean field: any non-empty string is true."""
    if name == "fsFreezeEnabled":
        return ("read any non-empty string as true: it would freeze" +
                (" anyway" if not meaning else ""))
    return ("read any non-empty string as true%s: with a missing or refused script the backup "
            "goes on, and with a failed or timed-out script its extension stops with an error "
            "(it cannot combine true with a string): no snapshot, no post-script"
            % (" (so \"false\" is true)" if not meaning else ""))


def _boolean(v: object, name: str, found: _Found, azure: bool = True) -> bool:
    if isinstance(v, bool):
        return v
    if azure and isinstance(v, str) and v.strip().lower() in ("true", "false"):
        meaning = v.strip().lower() == "true"
        found.diffs.append(AzureDifference("string-boolean", name, _azure_bool_string(name, meaning),
                                     "reads %s as %s" % (describe(v), json.dumps(meaning))))
        return meaning
    if azure and isinstance(v, int) and v in (0, 1):
        meaning = bool(v)
        found.diffs.append(AzureDifference("number-boolean", name,
                                     "read %d as %s too: write %s" % (v, json.dumps(meaning),
                                                                       json.dumps(meaning)),
                                     "reads %d as %s" % (v, json.dumps(meaning))))
        return meaning
    raise _Bad("true or false")


def _vmsnap_boolean(v: object, name: str, found: _Found) -> bool:
    return _boolean(v, name, found, azure=False)


def _retries(v: object, name: str, found: _Found) -> int:
    want = "an integer from 0 to %d (at most %d retries)" % (MAX_RETRIES, MAX_RETRIES)
    if isinstance(v, str) and _INTEGER_TEXT.match(v):
        n = int(v)
        if n <= MAX_RETRIES:
            found.diffs.append(AzureDifference(
                "string-number", name,
                "keep the string: a script that succeeds at once is unaffected, but after a "
                "failure its retry check compares a number with a string and fails, the result "
                "never arrives, and Azure reports PluginhostPreTimeout/PluginhostPostTimeout "
                "(310/311) after waiting out the whole timeout, without retrying",
                "reads %s as %d" % (describe(v), n)))
        v = n
    elif isinstance(v, float) and math.isfinite(v) and v == int(v):
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > MAX_RETRIES:
        raise _Bad(want)
    return v


def _seconds(v: object, name: str, found: _Found, azure: bool = False) -> float:
    want = "a number of seconds > 0 and at most %d (30 days)" % MAX_SECONDS
    if azure and isinstance(v, str) and _NUMBER_TEXT.match(v):
        n = float(v) if "." in v else int(v)
        found.diffs.append(AzureDifference(
            "string-number", name,
            "fail on the string (its min() of a string and a number raises): "
            "PluginhostConfigParsing (304), scripts skipped, a filesystem-consistent backup",
            "reads %s as %s seconds" % (describe(v), n)))
        v = n
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Bad(want)
    # compare before converting: an integer of 400 digits is no float
    if not (v > 0 and v <= MAX_SECONDS):
        raise _Bad(want)
    return float(v)


def seconds_option(text: str) -> float:
    """A number of seconds given on the command line (``--freeze-timeout``,
    ``freeze --timeout``), bounded as in the file: ValueError says the bound."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError("%r is not a number" % (text,)) from None
    if not (value > 0 and value <= MAX_SECONDS):
        raise ValueError("must be a number of seconds > 0 and at most %d (30 days), not %r"
                         % (MAX_SECONDS, text))
    return value


def _azure_seconds(v: object, name: str, found: _Found) -> float:
    value = _seconds(v, name, found, azure=True)
    if value > AZURE_TIMEOUT_CAP:
        found.diffs.append(AzureDifference(
            "timeout-cap", name,
            "cap it at %d seconds (its plugin host's limit): a script still running then "
            "is a timeout" % AZURE_TIMEOUT_CAP,
            "keeps %g seconds" % value))
    return value


def _dirty_cap(v: object, name: str, found: _Found) -> int:
    # the kernel pauses any write of a capped device for up to 200 ms: a cap of a
    # few MiB throttles writers to a crawl, hence the floor
    if isinstance(v, bool) or not isinstance(v, int) or not (
            v == 0 or MIN_DIRTY_CAP_MIB <= v <= MAX_DIRTY_CAP_MIB):
        raise _Bad("0 (no cap) or an integer from %d to %d (MiB)"
                   % (MIN_DIRTY_CAP_MIB, MAX_DIRTY_CAP_MIB))
    return v


def _freeze_seconds(v: object, name: str, found: _Found) -> float:
    return _seconds(v, name, found, azure=False)


# a converter: (the parsed value, the field's name, what it found on the way) -> the value
if TYPE_CHECKING:
    Converter = Callable[[Any, str, _Found], Any]

# field name -> (attribute, converter, required); the converter raises _Bad(what it wants)
FIELDS: dict[str, tuple[str, Converter, bool]] = {
    "pluginName": ("plugin_name", _string, False),
    "preScriptLocation": ("pre_script", _string, True),
    "postScriptLocation": ("post_script", _string, True),
    "preScriptParams": ("pre_params", _params, False),
    "postScriptParams": ("post_params", _params, False),
    "preScriptNoOfRetries": ("pre_retries", _retries, False),
    "postScriptNoOfRetries": ("post_retries", _retries, False),
    "timeoutInSeconds": ("timeout", _azure_seconds, False),
    "continueBackupOnFailure": ("continue_on_failure", _boolean, False),
    "fsFreezeEnabled": ("fs_freeze_enabled", _boolean, False),
    # vmsnap's own fields: strict (no Azure config has them)
    "freezeTimeoutInSeconds": ("freeze_timeout", _freeze_seconds, False),
    "mountsToSkip": ("mounts_to_skip", _string_list, False),
    "mountsToFreeze": ("mounts_to_freeze", _string_list, False),
    "hooksDirectory": ("hooks_directory", _full_path, False),
    "expediteRcu": ("expedite_rcu", _vmsnap_boolean, False),
    "metricsFile": ("metrics_file", _full_path, False),
    "presyncDirtyCapMiB": ("dirty_cap_mib", _dirty_cap, False),
    "presyncGentle": ("presync_gentle", _vmsnap_boolean, False),
}

# Fields Azure reads that vmsnap has no use for, and why.
AZURE_ONLY_FIELDS = {
    "ScriptsExecutionPollTimeSeconds": (
        "Azure checks its scripts every 1-5 s (this field, default 3); vmsnap waits on each "
        "script's exit directly and reacts within milliseconds, so it has no poll interval: "
        "ignored"),
    "appName": "Azure only sends it to its telemetry: ignored",
}


# vmsnap's own fields, and what Azure does instead.
VMSNAP_ONLY_FIELDS = {
    "freezeTimeoutInSeconds": "its freeze helper has its own limit",
    "mountsToSkip": "it freezes every filesystem it handles",
    "mountsToFreeze": "it freezes every filesystem it handles",
    "hooksDirectory": "it has no hooks",
    "expediteRcu": "it does not speed up the freeze",
    "metricsFile": "it writes no metrics",
    "presyncDirtyCapMiB": "it flushes without a cap",
    "presyncGentle": "it flushes everything at once, right before the freeze",
}


def did_you_mean(name: str) -> str | None:
    """The known field NAME is a slip of (case first, then a close spelling), or None."""
    known = list(FIELDS) + list(AZURE_ONLY_FIELDS)
    for k in known:
        if k.lower() == name.lower():
            return k
    import difflib  # only for an unknown field: not worth its import time on every run
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
    return close[0] if close else None


def config_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def read_config_file(path: str) -> tuple[bytes, os.stat_result] | None:
    """Opens PATH once and returns (bytes, stat of that same file), or None
    if there is no file.  Reads at most MAX_CONFIG_BYTES + 1 bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError("%s: cannot open the configuration file: %s"
                          % (path, exc.strerror)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError("%s: not a regular file" % path)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_CONFIG_BYTES:
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
            size += len(b)
        return b"".join(chunks), st
    finally:
        os.close(fd)


def _reject_constant(name: str) -> None:
    raise ValueError("%s is not valid JSON" % name)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError("duplicate key %r" % k)
        out[k] = v
    return out


def decode_document(data: bytes, path: str) -> Any:
    """The JSON document in DATA; ConfigError if it is not strict JSON."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError("%s: larger than %d bytes; not a configuration file" % (path, MAX_CONFIG_BYTES))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError("%s: not UTF-8 text (byte %d)" % (path, exc.start)) from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except RecursionError:
        raise ConfigError("%s: nested too deeply to be a configuration file" % path) from None
    except json.JSONDecodeError as exc:
        raise ConfigError("%s: not valid JSON: %s at line %d column %d"
                          % (path, exc.msg, exc.lineno, exc.colno)) from None
    except ValueError as exc:
        raise ConfigError("%s: not valid JSON: %s" % (path, exc)) from None


def _other_fields(doc: dict[str, Any], found: _Found) -> tuple[list[str], dict[str, str]]:
    """Notes on the fields vmsnap does not read: Azure's own (known, explained)
    and unknown ones, with a did-you-mean for slips.  Returns (hints, slips)."""
    hints: list[str] = []
    slips: dict[str, str] = {}
    for name in doc:
        if name in FIELDS:
            continue
        if name in AZURE_ONLY_FIELDS:
            found.notes.append("%s: %s" % (name, AZURE_ONLY_FIELDS[name]))
            if name == "ScriptsExecutionPollTimeSeconds":
                found.diffs.append(AzureDifference(
                    "poll-time", name, "look at a running script only every 1-5 s (3 unless "
                    "this field says 1 to 5): each script's end is seen up to that late, and its "
                    "timeout counts in those steps", "waits on each script's exit directly",
                    warn=False))
            continue
        meant = did_you_mean(name)
        if meant and meant not in doc:
            slips[meant] = name
            hints.append("unknown field %r: did you mean %r? (field names are case-sensitive)"
                         % (name, meant))
        else:
            hints.append("unknown field %r ignored" % name)
    return hints, slips


def _behaviour_differences(doc: dict[str, Any], cfg: Config, found: _Found) -> None:
    """Differences of a valid file that only ``check --azure`` lists."""
    if "timeoutInSeconds" not in doc:
        found.diffs.append(AzureDifference(
            "timeout-default", "timeoutInSeconds",
            "use %d seconds (its ScriptRunner's default; Microsoft's README says 30)"
            % AZURE_DEFAULT_TIMEOUT, "uses 30 seconds (absent)", warn=False))
    for name in ("preScriptNoOfRetries", "postScriptNoOfRetries"):
        n = getattr(cfg, FIELDS[name][0])
        if n:
            found.diffs.append(AzureDifference(
                "retries", name, "never run the script again (its retry loop only polls the "
                "process that already exited): one attempt in all",
                "runs the script again after a failure, up to %d more time%s"
                % (n, "" if n == 1 else "s"), warn=False))


def parse_config(data: bytes, path: str = "<config>") -> Config:
    doc = decode_document(data, path)
    if not isinstance(doc, dict):
        raise ConfigError("%s: the top level must be a JSON object, not %s" % (path, describe(doc)))
    cfg = Config(path=path)
    found = _Found()
    hints, slips = _other_fields(doc, found)
    problems = []
    for name, (attr, convert, required) in FIELDS.items():
        if name not in doc:
            if required:
                problems.append("%s is required" % name + (
                    " (the file has %r: field names are case-sensitive)" % slips[name]
                    if name in slips else ""))
            continue
        try:
            setattr(cfg, attr, convert(doc[name], name, found))
        except _Bad as bad:
            problems.append("%s must be %s, not %s" % (name, bad, describe(doc[name])))
    if not problems:
        _behaviour_differences(doc, cfg, found)
    for name in VMSNAP_ONLY_FIELDS:
        if name in doc:
            found.diffs.append(AzureDifference(
                "vmsnap-only", name, "ignore it (%s)" % VMSNAP_ONLY_FIELDS[name], "uses it",
                warn=False))
    cfg.warnings.extend("%s: %s" % (path, h) for h in hints + found.notes)
    cfg.warnings.extend("%s: %s" % (path, d.warning()) for d in found.diffs if d.warn)
    if problems:
        exc = ConfigError("%s: %s" % (path, "; ".join(problems + hints)))
        exc.warnings = cfg.warnings
        exc.azure_differences = found.diffs
        raise exc
    if cfg.mounts_to_freeze == []:
        cfg.warnings.append("%s: mountsToFreeze is an empty list: no filesystem will be frozen "
                            "(leave the field out to freeze every eligible filesystem)" % path)
    cfg.azure_differences = found.diffs
    return cfg


# What to freeze.  A file that cannot be used as a whole (305, 317) still says
# what it excludes: these fields, each valid on its own, are honoured, so that
# a typo elsewhere never widens the freeze to what the admin left out.
SELECTION_FIELDS = ("fsFreezeEnabled", "mountsToSkip", "mountsToFreeze")


def selection_settings(data: bytes, path: str, also: tuple[str, ...] = ()
                       ) -> tuple[Config | None, str | None]:
    """(Config of defaults with the selection fields of DATA, None) when the
    selection can be read; (None, why) when it cannot (DATA is no JSON
    object, or one of the selection fields is itself invalid: what it would
    have excluded is unknown).  ALSO: more fields to take when valid
    (ignored when not)."""
    try:
        doc = decode_document(data, path)
    except ConfigError as exc:
        return None, str(exc)
    if not isinstance(doc, dict):
        return None, "%s: the top level is %s, not a JSON object" % (path, describe(doc))
    settings, found = Config(path=path), _Found()
    for name in SELECTION_FIELDS + tuple(also):
        if name not in doc:
            continue
        attr, convert, _ = FIELDS[name]
        try:
            setattr(settings, attr, convert(doc[name], name, found))
        except _Bad as bad:
            if name in SELECTION_FIELDS:
                return None, "%s: %s must be %s, not %s" % (path, name, bad, describe(doc[name]))
    return settings, None


def load_config(path: str) -> Config:
    """Reads and parses PATH (no permission check: see policy)."""
    got = read_config_file(path)
    if got is None:
        raise FileNotFoundError(path)
    return parse_config(got[0], path)


EXAMPLE = {
    "pluginName": "ScriptRunner",
    "preScriptLocation": "/etc/vmsnap/pre.sh",
    "postScriptLocation": "/etc/vmsnap/post.sh",
    "preScriptParams": [],
    "postScriptParams": [],
    "preScriptNoOfRetries": 0,
    "postScriptNoOfRetries": 0,
    "timeoutInSeconds": 30,
    "continueBackupOnFailure": True,
    "fsFreezeEnabled": True,
    "freezeTimeoutInSeconds": 60,
    "mountsToSkip": [],
}
