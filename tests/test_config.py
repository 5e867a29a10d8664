"""The configuration file: fields, defaults, types, and hostile bytes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmsnap_native.config import MAX_CONFIG_BYTES, Config, parse_config
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


@pytest.mark.parametrize("doc,needle", [
    ({"postScriptLocation": "/b"}, "preScriptLocation is required"),
    ({"preScriptLocation": "/a", "postScriptLocation": "/b", "timeoutInSeconds": "30"},
     "timeoutInSeconds must be a number > 0"),
    ({"preScriptLocation": "/a", "postScriptLocation": "/b", "timeoutInSeconds": 0},
     "timeoutInSeconds must be a number > 0"),
    ({"preScriptLocation": "/a", "postScriptLocation": "/b", "preScriptNoOfRetries": True},
     "preScriptNoOfRetries must be an integer >= 0"),
    ({"preScriptLocation": "/a", "postScriptLocation": "/b", "preScriptNoOfRetries": -1},
     "preScriptNoOfRetries must be an integer >= 0"),
    ({"preScriptLocation": "/a", "postScriptLocation": "/b", "preScriptParams": "x"},
     "preScriptParams must be a list of strings"),
    ({"preScriptLocation": "/a", "postScriptLocation": "/b", "fsFreezeEnabled": "yes"},
     "fsFreezeEnabled must be true or false"),
    ({"preScriptLocation": "pre.sh", "postScriptLocation": "/b"},
     "preScriptLocation must be a full path"),
    ([1, 2], "top level must be a JSON object"),
])
def test_wrong_types_name_the_field(doc, needle):
    with pytest.raises(ConfigError) as ei:
        parse_config(json.dumps(doc).encode(), "cfg.json")
    assert needle in str(ei.value) and "cfg.json" in str(ei.value)


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


@settings(max_examples=300, deadline=None)
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
    else:
        assert isinstance(cfg, Config) and cfg.pre_script.startswith("/") or cfg.pre_script == ""
