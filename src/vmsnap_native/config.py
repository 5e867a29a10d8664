"""The configuration file: Azure's VMSnapshotScriptPluginConfig.json plus
vmsnap's own optional fields (SPEC §1).

Reading is bounded and strict: invalid UTF-8, duplicate keys, NaN/Infinity,
deep nesting and wrong types are all ``ConfigError`` (IncorrectJSONConfigFile)
naming the field, never a traceback.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass, field

from .errors import ConfigError

DEFAULT_CONFIG_PATH = "/etc/azure/VMSnapshotScriptPluginConfig.json"
CONFIG_ENV = "VMSNAP_CONFIG"
DEFAULT_HOOKS_DIRECTORY = "/etc/vmsnap/hooks.d"
MAX_CONFIG_BYTES = 1024 * 1024


@dataclass
class Config:
    path: str | None = None
    plugin_name: str = "ScriptRunner"
    pre_script: str | None = None
    post_script: str | None = None
    pre_params: list = field(default_factory=list)
    post_params: list = field(default_factory=list)
    pre_retries: int = 0
    post_retries: int = 0
    timeout: float = 30.0
    continue_on_failure: bool = True
    fs_freeze_enabled: bool = True
    freeze_timeout: float = 60.0
    mounts_to_skip: list = field(default_factory=list)
    mounts_to_freeze: list | None = None
    hooks_directory: str = DEFAULT_HOOKS_DIRECTORY
    expedite_rcu: bool = True
    warnings: list = field(default_factory=list)

    @property
    def has_scripts(self) -> bool:
        return self.pre_script is not None


def _string(v):
    return isinstance(v, str)


def _string_list(v):
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _positive(v):
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and v > 0)


def _boolean(v):
    return isinstance(v, bool)


# field name -> (attribute, check, what the check wants, required)
FIELDS = {
    "pluginName": ("plugin_name", _string, "a string", False),
    "preScriptLocation": ("pre_script", _string, "a string (full path of the pre-script)", True),
    "postScriptLocation": ("post_script", _string, "a string (full path of the post-script)", True),
    "preScriptParams": ("pre_params", _string_list, "a list of strings", False),
    "postScriptParams": ("post_params", _string_list, "a list of strings", False),
    "preScriptNoOfRetries": ("pre_retries", _count, "an integer >= 0", False),
    "postScriptNoOfRetries": ("post_retries", _count, "an integer >= 0", False),
    "timeoutInSeconds": ("timeout", _positive, "a number > 0", False),
    "continueBackupOnFailure": ("continue_on_failure", _boolean, "true or false", False),
    "fsFreezeEnabled": ("fs_freeze_enabled", _boolean, "true or false", False),
    "freezeTimeoutInSeconds": ("freeze_timeout", _positive, "a number > 0", False),
    "mountsToSkip": ("mounts_to_skip", _string_list, "a list of strings", False),
    "mountsToFreeze": ("mounts_to_freeze", _string_list, "a list of strings", False),
    "hooksDirectory": ("hooks_directory", _string, "a string", False),
    "expediteRcu": ("expedite_rcu", _boolean, "true or false", False),
}


def config_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def read_config_file(path: str):
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
        chunks, size = [], 0
        while size <= MAX_CONFIG_BYTES:
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
            size += len(b)
        return b"".join(chunks), st
    finally:
        os.close(fd)


def _reject_constant(name):
    raise ValueError("%s is not valid JSON" % name)


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError("duplicate key %r" % k)
        out[k] = v
    return out


def parse_config(data: bytes, path: str = "<config>") -> Config:
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError("%s: larger than %d bytes; not a configuration file" % (path, MAX_CONFIG_BYTES))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError("%s: not UTF-8 text (byte %d)" % (path, exc.start)) from None
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except RecursionError:
        raise ConfigError("%s: nested too deeply to be a configuration file" % path) from None
    except json.JSONDecodeError as exc:
        raise ConfigError("%s: not valid JSON: %s at line %d column %d"
                          % (path, exc.msg, exc.lineno, exc.colno)) from None
    except ValueError as exc:
        raise ConfigError("%s: not valid JSON: %s" % (path, exc)) from None
    if not isinstance(doc, dict):
        raise ConfigError("%s: the top level must be a JSON object, not %s" % (path, type(doc).__name__))
    cfg = Config(path=path)
    problems = []
    for name, (attr, check, want, required) in FIELDS.items():
        if name not in doc:
            if required:
                problems.append("%s is required" % name)
            continue
        value = doc[name]
        if not check(value):
            problems.append("%s must be %s, not %s" % (name, want, json.dumps(value)[:60]))
            continue
        setattr(cfg, attr, float(value) if attr in ("timeout", "freeze_timeout") else value)
    for name in doc:
        if name not in FIELDS:
            cfg.warnings.append("%s: unknown field %r ignored" % (path, name))
    for name, attr in (("preScriptLocation", "pre_script"), ("postScriptLocation", "post_script")):
        value = getattr(cfg, attr)
        if isinstance(value, str) and value and not value.startswith("/"):
            problems.append("%s must be a full path (starting with /), not %r" % (name, value))
        if isinstance(value, str) and "\0" in value:
            problems.append("%s contains a NUL byte" % name)
    if problems:
        raise ConfigError("%s: %s" % (path, "; ".join(problems)))
    return cfg


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
