"""The configuration file: fields, defaults, types, and hostile bytes."""

from __future__ import annotations

import json
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmsnap_native import cycle, mountinfo
from vmsnap_native.config import MAX_CONFIG_BYTES, Config, parse_config, seconds_option
from vmsnap_native.errors import ConfigError

MICROSOFT_TEMPLATE = b"""{
    "pluginName" : "ScriptRunner",
    "preScriptLocation" : "/etc/azure/pre.sh",
    "postScriptLocation" : "/etc/azure/post.sh",
    "preScriptParams" : ["", ""],
    "postScriptParams" : ["", ""],
    "preScriptNoOfRetries" : 0,
    "postScriptNoOfRetries" : 0,
    "timeoutInSeconds" : 30,
    "continueBackupOnFailure" : true,
    "fsFreezeEnabled" : true
}"""


def test_microsoft_template_parses():
    cfg = parse_config(MICROSOFT_TEMPLATE, "t.json")
    assert cfg.pre_script == "/etc/azure/pre.sh" and cfg.pre_params == ["", ""]
    assert cfg.timeout == 30.0 and cfg.continue_on_failure and cfg.fs_freeze_enabled
    assert cfg.freeze_timeout == 60.0 and cfg.warnings == []


def test_defaults_and_vmsnap_fields():
    cfg = parse_config(json.dumps({"preScriptLocation": "/a", "postScriptLocation": "/b",
                                   "freezeTimeoutInSeconds": 5, "mountsToSkip": ["/boot*"],
                                   "mountsToFreeze": ["/data"], "hooksDirectory": "/h"}).encode())
    assert cfg.pre_retries == 0 and cfg.timeout == 30.0 and cfg.continue_on_failure is True
    assert cfg.freeze_timeout == 5.0 and cfg.mounts_to_skip == ["/boot*"]
    assert cfg.mounts_to_freeze == ["/data"] and cfg.hooks_directory == "/h"


def test_unknown_field_is_a_warning():
    cfg = parse_config(b'{"preScriptLocation": "/a", "postScriptLocation": "/b", "colour": 1}', "c")
    assert cfg.warnings == ["c: unknown field 'colour' ignored"]


BASE = {"preScriptLocation": "/a", "postScriptLocation": "/b"}


def _doc(**fields):
    return json.dumps(dict(BASE, **fields)).encode()


@pytest.mark.parametrize("doc,needle", [
    ({"postScriptLocation": "/b"}, "preScriptLocation is required"),
    (dict(BASE, timeoutInSeconds="thirty"), "timeoutInSeconds must be a number of seconds > 0"),
    (dict(BASE, timeoutInSeconds=0), "timeoutInSeconds must be a number of seconds > 0"),
    (dict(BASE, preScriptNoOfRetries=True), "preScriptNoOfRetries must be an integer from 0 to 1000"),
    (dict(BASE, preScriptNoOfRetries=-1), "preScriptNoOfRetries must be an integer from 0 to 1000"),
    (dict(BASE, preScriptParams="x"), "preScriptParams must be an array of strings"),
    (dict(BASE, fsFreezeEnabled="yes"), "fsFreezeEnabled must be true or false"),
    (dict(BASE, continueBackupOnFailure=""), "continueBackupOnFailure must be true or false"),
    (dict(BASE, expediteRcu="false"), "expediteRcu must be true or false"),
    ([1, 2], "top level must be a JSON object, not an array"),
])
def test_wrong_types_name_the_field(doc, needle):
    with pytest.raises(ConfigError) as ei:
        parse_config(json.dumps(doc).encode(), "cfg.json")
    assert needle in str(ei.value) and "cfg.json" in str(ei.value)


# -- bounds (issue 11 item 7) ------------------------------------------------------

@pytest.mark.parametrize("name,value,bound", [
    ("timeoutInSeconds", 30 * 24 * 3600 + 1, "at most 2592000 (30 days)"),
    ("timeoutInSeconds", 1e10, "at most 2592000 (30 days)"),
    ("timeoutInSeconds", 10 ** 400, "at most 2592000 (30 days)"),
    ("freezeTimeoutInSeconds", 1e10, "at most 2592000 (30 days)"),
    ("freezeTimeoutInSeconds", 10 ** 400, "at most 2592000 (30 days)"),
    ("preScriptNoOfRetries", 1001, "from 0 to 1000"),
    ("postScriptNoOfRetries", 10 ** 30, "from 0 to 1000"),
], ids=lambda v: str(v)[:24])
def test_out_of_bound_numbers_are_305_naming_field_and_bound(name, value, bound):
    with pytest.raises(ConfigError) as ei:
        parse_config(_doc(**{name: value}), "cfg.json")
    assert ("%s must be" % name) in str(ei.value) and bound in str(ei.value)


@pytest.mark.parametrize("text", [b"1e400", b"-1e400", b"NaN", b"Infinity", b"-Infinity"])
def test_infinite_and_nan_timeouts_are_305(text):
    data = b'{"preScriptLocation": "/a", "postScriptLocation": "/b", "freezeTimeoutInSeconds": %s}' % text
    with pytest.raises(ConfigError):
        parse_config(data, "x")


@pytest.mark.parametrize("text,ok", [("60", True), ("2592000", True), ("2592001", False),
                                     ("1e10", False), ("nan", False), ("inf", False),
                                     ("0", False), ("x", False)])
def test_command_line_seconds_have_the_same_bound(text, ok):
    if ok:
        assert seconds_option(text) == float(text)
    else:
        with pytest.raises(ValueError, match="not a number|at most 2592000 \\(30 days\\)"):
            seconds_option(text)


def test_the_largest_allowed_values_are_accepted():
    cfg = parse_config(_doc(timeoutInSeconds=2592000, freezeTimeoutInSeconds=2592000,
                            preScriptNoOfRetries=1000, postScriptNoOfRetries=1000))
    assert cfg.timeout == cfg.freeze_timeout == 2592000.0 and cfg.pre_retries == 1000


def _write_config(tmp_path, doc) -> str:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(doc))
    os.chmod(path, 0o600)
    return str(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="the configuration must be root-owned")
def test_a_huge_freeze_timeout_is_a_config_problem_not_a_traceback(tmp_path):
    path = _write_config(tmp_path, dict(BASE, freezeTimeoutInSeconds=10 ** 400))
    plan = cycle.make_plan(path)
    assert plan.config_problem.code == "IncorrectJSONConfigFile"
    assert "freezeTimeoutInSeconds must be" in plan.config_problem.message
    assert plan.freeze_timeout == 60.0


@pytest.mark.parametrize("hooks", ["hooks.d", "./hooks.d", "~/hooks.d", ""])
def test_relative_hooks_directory_is_305_naming_the_field(hooks):
    with pytest.raises(ConfigError) as ei:
        parse_config(_doc(hooksDirectory=hooks), "cfg.json")
    assert "hooksDirectory must be a full path (starting with /)" in str(ei.value)


@pytest.mark.parametrize("where", ["pre.sh", "~/pre.sh", "./bin/pre.sh", ""])
def test_relative_script_path_is_left_to_the_policy(where):
    # the policy reports 302/303 for it, as Azure does; the file itself is fine
    cfg = parse_config(_doc(preScriptLocation=where))
    assert cfg.pre_script == where


# -- mountsToFreeze: [] --------------------------------------------------------------

MOUNTS = """\
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 27 8:17 / /data rw,noatime - xfs /dev/sdb1 rw
"""


def test_empty_mounts_to_freeze_freezes_nothing_and_says_so():
    cfg = parse_config(_doc(mountsToFreeze=[]), "c")
    assert cfg.mounts_to_freeze == []
    assert any("mountsToFreeze is an empty list: no filesystem will be frozen" in w
               for w in cfg.warnings)
    sel = mountinfo.select(mountinfo.parse_mountinfo(MOUNTS), only=cfg.mounts_to_freeze,
                           sysfs="/nonexistent")
    assert sel.eligible == []
    assert {c.mount.mountpoint for c in sel.skipped} == {"/", "/data"}
    assert all("mountsToFreeze is an empty list" in c.reason for c in sel.skipped)


def test_absent_mounts_to_freeze_keeps_every_eligible_filesystem():
    cfg = parse_config(_doc())
    assert cfg.mounts_to_freeze is None
    assert not any("mountsToFreeze" in w for w in cfg.warnings)
    sel = mountinfo.select(mountinfo.parse_mountinfo(MOUNTS), only=cfg.mounts_to_freeze,
                           sysfs="/nonexistent")
    assert [c.mount.mountpoint for c in sel.eligible] == ["/data", "/"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the configuration must be root-owned")
def test_plan_with_empty_mounts_to_freeze_selects_nothing_on_this_machine(tmp_path):
    path = _write_config(tmp_path, dict(BASE, mountsToFreeze=[]))
    assert mountinfo.discover().eligible, "this machine has a freezable filesystem (/)"
    plan = cycle.make_plan(path)
    assert plan.config_problem is None
    assert plan.selection.eligible == []
    assert any("no filesystem will be frozen" in w for w in plan.warnings)


# -- Azure's forms (issue 12 A) ------------------------------------------------------

@pytest.mark.parametrize("value,meaning,azure", [
    ("false", False, "read any non-empty string as true (so \"false\" is true)"),
    ("true", True, "read any non-empty string as true"),
    ("FALSE", False, "read any non-empty string as true"),
    (0, False, "read 0 as false too"),
    (1, True, "read 1 as true too"),
])
def test_azure_boolean_forms_keep_their_meaning_and_say_what_azure_does(value, meaning, azure):
    cfg = parse_config(_doc(continueBackupOnFailure=value), "c")
    assert cfg.continue_on_failure is meaning
    [w] = [w for w in cfg.warnings if "continueBackupOnFailure" in w]
    assert "Azure would " + azure in w


def test_string_false_for_freeze_says_azure_freezes_anyway():
    cfg = parse_config(_doc(fsFreezeEnabled="false"), "c")
    assert cfg.fs_freeze_enabled is False
    assert any("Azure would read any non-empty string as true: it would freeze anyway" in w
               for w in cfg.warnings)


def test_numbers_in_strings():
    cfg = parse_config(_doc(preScriptNoOfRetries="2", timeoutInSeconds="45"), "c")
    assert cfg.pre_retries == 2 and cfg.timeout == 45.0
    text = " ".join(cfg.warnings)
    assert "reads the string \"2\" as 2" in text and "(310/311)" in text
    assert "reads the string \"45\" as 45 seconds" in text and "(304)" in text


def test_timeout_above_azure_cap_is_kept_with_a_warning():
    cfg = parse_config(_doc(timeoutInSeconds=3600), "c")
    assert cfg.timeout == 3600.0
    assert any("keeps 3600 seconds; Azure would cap it at 1800 seconds" in w for w in cfg.warnings)
    assert not parse_config(_doc(timeoutInSeconds=1800)).warnings


def test_poll_time_field_is_known_and_explained():
    cfg = parse_config(_doc(ScriptsExecutionPollTimeSeconds=2), "c")
    [w] = cfg.warnings
    assert "unknown" not in w and "ScriptsExecutionPollTimeSeconds" in w
    assert "no poll interval" in w


def test_numbers_in_params_are_passed_as_azure_passes_them():
    cfg = parse_config(_doc(preScriptParams=["-s", 5, 2.5]), "c")
    assert cfg.pre_params == ["-s", "5", "2.5"]


def test_lone_surrogate_in_a_param_is_305():
    with pytest.raises(ConfigError, match="preScriptParams must be .*lone surrogate"):
        parse_config(b'{"preScriptLocation": "/a", "postScriptLocation": "/b", '
                     b'"preScriptParams": ["\\ud800"]}', "c")


def test_case_slip_hint_even_when_the_file_is_otherwise_invalid():
    doc = {"PreScriptLocation": "/a", "postScriptLocation": "/b", "timeoutInSeconds": None}
    with pytest.raises(ConfigError) as ei:
        parse_config(json.dumps(doc).encode(), "c")
    msg = str(ei.value)
    assert "did you mean 'preScriptLocation'" in msg and "(the file has 'PreScriptLocation'" in msg
    assert "timeoutInSeconds must be a number of seconds > 0" in msg and "not null" in msg


def test_case_slip_hint_in_a_valid_file():
    cfg = parse_config(_doc(TimeoutInSeconds=60, colour=1), "c")
    assert "c: unknown field 'TimeoutInSeconds': did you mean 'timeoutInSeconds'? " \
           "(field names are case-sensitive)" in cfg.warnings
    assert "c: unknown field 'colour' ignored" in cfg.warnings


PYTHON_NAMES = re.compile(r"\b(NoneType|list|dict|str|int|float|bool|True|False|None)\b")


VALID = {("preScriptLocation", 'the string "s"'), ("preScriptParams", "an array"),
         ("mountsToSkip", "an array")}


@pytest.mark.parametrize("value,json_name", [(None, "null"), ([], "an array"), ({}, "an object"),
                                             (True, "true"), ("s", "the string \"s\"")])
@pytest.mark.parametrize("name", ["preScriptLocation", "timeoutInSeconds", "preScriptParams",
                                  "preScriptNoOfRetries", "mountsToSkip"])
def test_messages_name_json_types_never_python_ones(name, value, json_name):
    if (name, json_name) in VALID:
        return
    with pytest.raises(ConfigError) as ei:
        parse_config(_doc(**{name: value}), "c")
    msg = str(ei.value)
    assert "not " + json_name in msg
    assert not PYTHON_NAMES.search(msg), msg


@pytest.mark.parametrize("data,needle", [
    (b'{"preScriptLocation": "/a", "preScriptLocation": "/b"}', "duplicate key"),
    (b'{"timeoutInSeconds": NaN}', "NaN is not valid JSON"),
    (b'{"timeoutInSeconds": Infinity}', "Infinity is not valid JSON"),
    (b'\xff\xfe{}', "not UTF-8"),
    (b'[' * 100000 + b']' * 100000, "nested too deeply"),
    (b'{"a": ', "not valid JSON"),
    (b' ' * (MAX_CONFIG_BYTES + 1), "larger than"),
])
def test_hostile_bytes(data, needle):
    with pytest.raises(ConfigError) as ei:
        parse_config(data, "x")
    assert needle in str(ei.value)


# `make mutants` runs this once per mutant: 50 examples then (an explicit max_examples
# overrides its hypothesis profile)
@settings(max_examples=50 if os.environ.get("VMSNAP_HYPOTHESIS_PROFILE") == "mutants" else 300,
          deadline=None)
@given(st.one_of(
    st.binary(max_size=400),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                 lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(
                     ["preScriptLocation", "postScriptLocation", "timeoutInSeconds",
                      "preScriptParams", "preScriptNoOfRetries", "fsFreezeEnabled", "x"]), c,
                     max_size=6), max_leaves=20).map(lambda v: json.dumps(v).encode()),
))
def test_any_bytes_give_a_config_or_a_config_error(data):
    try:
        cfg = parse_config(data, "fuzz.json")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.json: ")
        # the user's own strings are quoted; what vmsnap says around them names JSON types
        said = re.sub(r'"(?:[^"\\]|\\.)*"' + r"|'[^']*'", "", str(exc))
        assert not PYTHON_NAMES.search(said), str(exc)
    else:
        assert isinstance(cfg, Config) and isinstance(cfg.pre_script, str)
        assert 0 < cfg.timeout <= 2592000 and 0 <= cfg.pre_retries <= 1000


@pytest.mark.parametrize("value, ok", [(0, True), (16, True), (64, True), (8, False), (-1, False),
                                       (True, False), ("64", False), (1 << 21, False)])
def test_presync_dirty_cap_field(value, ok):
    """presyncDirtyCapMiB: 0 turns the cap off; a few MiB would throttle writers to a crawl."""
    data = {"preScriptLocation": "/a", "postScriptLocation": "/b", "presyncDirtyCapMiB": value}
    if ok:
        assert parse_config(json.dumps(data).encode(), "c.json").dirty_cap_mib == value
    else:
        with pytest.raises(ConfigError, match="presyncDirtyCapMiB.*from 16"):
            parse_config(json.dumps(data).encode(), "c.json")


def test_presync_dirty_cap_reaches_the_freeze(tmp_path, monkeypatch):
    """The run hands the configured cap to its freeze session."""
    seen = {}

    def spy(*args, **kw):
        seen["cap"] = kw.get("dirty_cap_mb")
        raise OSError(2, "stop here", "/nowhere")

    monkeypatch.setattr(cycle, "FreezeSession", spy)
    cfg = Config(pre_script=None, dirty_cap_mib=0)
    plan = cycle.make_plan(cfg, mounts=["/"])
    c = cycle.Cycle(plan, None, cycle.Logbook(None))
    c.run_freeze()   # the spy stops it before anything is opened or frozen
    assert seen.get("cap") == 0


# -- the selection, read on its own (a configuration never widens the freeze) ----------

@pytest.mark.parametrize("doc,expected", [
    ({"timeoutInSeconds": "thirty", "mountsToSkip": ["/"]}, (True, ["/"], None)),
    ({"fsFreezeEnabled": False, "preScriptLocation": 7}, (False, [], None)),
    ({"mountsToFreeze": ["/data"], "mountsToSkip": ["/data/tmp"], "hooksDirectory": "rel"},
     (True, ["/data/tmp"], ["/data"])),
])
def test_selection_fields_are_read_each_on_its_own(doc, expected):
    from vmsnap_native.config import selection_settings
    settings, why = selection_settings(json.dumps(doc).encode(), "c.json")
    assert why is None
    assert (settings.fs_freeze_enabled, settings.mounts_to_skip,
            settings.mounts_to_freeze) == expected
    assert settings.timeout == 30.0 and settings.pre_script is None   # the rest: defaults


@pytest.mark.parametrize("data,needle", [
    (b"{", "not valid JSON"),
    (b"[]", "not a JSON object"),
    (b'{"mountsToSkip": "/"}', "mountsToSkip must be an array of strings"),
    (b'{"mountsToFreeze": [1]}', "mountsToFreeze must be an array of strings"),
    (b'{"fsFreezeEnabled": "no"}', "fsFreezeEnabled must be true or false"),
])
def test_a_selection_that_cannot_be_read_says_why(data, needle):
    from vmsnap_native.config import selection_settings
    settings, why = selection_settings(data, "c.json")
    assert settings is None and needle in why and why.startswith("c.json: ")


def test_an_invalid_extra_field_does_not_lose_the_selection():
    from vmsnap_native.config import selection_settings
    settings, why = selection_settings(b'{"mountsToSkip": ["/"], "metricsFile": "rel.prom"}',
                                       "c.json", also=("metricsFile",))
    assert why is None and settings.mounts_to_skip == ["/"] and settings.metrics_file is None
