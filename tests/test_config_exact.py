"""The configuration parser's exact answers: defaults, each field's check
at its boundaries, the size limit to the byte, and every error message
(they name the file and the field).  Fast, no root: for `make mutants`."""

from __future__ import annotations

import json
import os

import pytest

from vmsnap_native import config as C
from vmsnap_native.errors import ConfigError

BASE = {"preScriptLocation": "/p", "postScriptLocation": "/q"}


def parse(**fields):
    return C.parse_config(json.dumps({**BASE, **fields}).encode(), "/etc/c.json")


def error(data, path="/etc/c.json"):
    with pytest.raises(ConfigError) as ei:
        C.parse_config(data if isinstance(data, bytes) else json.dumps(data).encode(), path)
    return str(ei.value)


def test_defaults():
    c = C.Config()
    assert (c.path, c.plugin_name, c.pre_script, c.post_script) == (None, "ScriptRunner", None, None)
    assert (c.pre_params, c.post_params, c.pre_retries, c.post_retries) == ([], [], 0, 0)
    assert c.timeout == 30.0 and c.freeze_timeout == 60.0
    assert c.continue_on_failure is True and c.fs_freeze_enabled is True and c.expedite_rcu is True
    assert c.mounts_to_skip == [] and c.mounts_to_freeze is None and c.warnings == []
    assert c.hooks_directory == "/etc/vmsnap/hooks.d" == C.DEFAULT_HOOKS_DIRECTORY
    assert c.has_scripts is False and C.Config(pre_script="/p").has_scripts is True
    assert C.Config().pre_params is not c.pre_params   # not shared between instances
    assert C.MAX_CONFIG_BYTES == 1048576


def test_a_parsed_file_keeps_the_defaults_it_does_not_set():
    c = parse()
    assert (c.path, c.pre_script, c.post_script) == ("/etc/c.json", "/p", "/q")
    assert c.timeout == 30.0 and c.continue_on_failure is True and c.warnings == []
    assert c.has_scripts is True


def test_config_path_order(monkeypatch):
    monkeypatch.delenv("VMSNAP_CONFIG", raising=False)
    assert C.config_path() == "/etc/azure/VMSnapshotScriptPluginConfig.json"
    monkeypatch.setenv("VMSNAP_CONFIG", "/env.json")
    assert C.config_path() == "/env.json" and C.config_path("/x.json") == "/x.json"


SECONDS = "a number of seconds > 0 and at most 2592000 (30 days)"
RETRIES = "an integer from 0 to 1000 (at most 1000 retries)"


@pytest.mark.parametrize("name,attr,good,bad,want", [
    ("pluginName", "plugin_name", "X", 5, "a string, not 5"),
    ("preScriptParams", "pre_params", ["a", "b"], ["a", None],
     "an array of strings (item 1 is null), not an array"),
    ("postScriptParams", "post_params", ["c"], "a", 'an array of strings, not the string "a"'),
    ("preScriptNoOfRetries", "pre_retries", 2, -1, RETRIES + ", not -1"),
    ("postScriptNoOfRetries", "post_retries", 3, True, RETRIES + ", not true"),
    ("timeoutInSeconds", "timeout", 2, 0, SECONDS + ", not 0"),
    ("freezeTimeoutInSeconds", "freeze_timeout", 7, False, SECONDS + ", not false"),
    ("continueBackupOnFailure", "continue_on_failure", False, 2, "true or false, not 2"),
    ("fsFreezeEnabled", "fs_freeze_enabled", False, "no", 'true or false, not the string "no"'),
    ("expediteRcu", "expedite_rcu", False, None, "true or false, not null"),
    ("mountsToSkip", "mounts_to_skip", ["/a"], [None], "an array of strings, not an array"),
    ("mountsToFreeze", "mounts_to_freeze", ["/b"], {}, "an array of strings, not an object"),
    ("hooksDirectory", "hooks_directory", "/h", [], "a string (a full path), not an array"),
    ("preScriptLocation", "pre_script", "/pre", 5, "a string, not 5"),
    ("postScriptLocation", "post_script", "/post", None, "a string, not null"),
])
def test_each_field_checked_and_set(name, attr, good, bad, want):
    got = getattr(parse(**{name: good}), attr)
    assert got == good and type(got) is (float if attr.endswith("timeout") else type(good))
    assert error({**BASE, name: bad}) == "/etc/c.json: %s must be %s" % (name, want)


def test_every_wrong_field_is_reported_at_once():
    assert error({**BASE, "pluginName": 5, "timeoutInSeconds": "x", "expediteRcu": 0}) == (
        '/etc/c.json: pluginName must be a string, not 5; timeoutInSeconds must be a number '
        'of seconds > 0 and at most 2592000 (30 days), not the string "x"; expediteRcu must '
        'be true or false, not 0')


def test_the_example_shows_the_defaults():
    # the example configuration (printed for users) spells out the defaults
    c = C.parse_config(json.dumps(C.EXAMPLE).encode(), "/ex")
    d = C.Config(path="/ex", pre_script="/etc/vmsnap/pre.sh", post_script="/etc/vmsnap/post.sh")
    # its only Azure differences are vmsnap's own fields, listed by check --azure alone
    assert [(x.topic, x.where, x.warn) for x in c.azure_differences] == [
        ("vmsnap-only", "freezeTimeoutInSeconds", False), ("vmsnap-only", "mountsToSkip", False)]
    c.azure_differences = []
    assert c == d and c.warnings == []
    assert set(C.EXAMPLE) <= set(C.FIELDS)
    assert {k: type(v) for k, v in C.EXAMPLE.items()} == {
        "pluginName": str, "preScriptLocation": str, "postScriptLocation": str,
        "preScriptParams": list, "postScriptParams": list, "preScriptNoOfRetries": int,
        "postScriptNoOfRetries": int, "timeoutInSeconds": int, "continueBackupOnFailure": bool,
        "fsFreezeEnabled": bool, "freezeTimeoutInSeconds": int, "mountsToSkip": list}


def test_number_boundaries():
    assert parse(preScriptNoOfRetries=0).pre_retries == 0
    assert parse(preScriptNoOfRetries=1000).pre_retries == 1000
    assert error({**BASE, "preScriptNoOfRetries": 1001}) == (
        "/etc/c.json: preScriptNoOfRetries must be %s, not 1001" % RETRIES)
    assert parse(timeoutInSeconds=1e-9).timeout == 1e-9
    assert parse(freezeTimeoutInSeconds=2592000).freeze_timeout == 2592000.0
    assert error({**BASE, "timeoutInSeconds": -1}) == (
        "/etc/c.json: timeoutInSeconds must be %s, not -1" % SECONDS)
    assert error({**BASE, "freezeTimeoutInSeconds": 2592000.5}) == (
        "/etc/c.json: freezeTimeoutInSeconds must be %s, not 2592000.5" % SECONDS)
    # 1e999 reads as infinity: refused
    msg = error(b'{"preScriptLocation": "/p", "postScriptLocation": "/q", "timeoutInSeconds": 1e999}')
    assert msg == "/etc/c.json: timeoutInSeconds must be %s, not Infinity" % SECONDS


def test_required_locations_and_text():
    assert error({}) == ("/etc/c.json: preScriptLocation is required; "
                         "postScriptLocation is required")
    # a relative location is the policy's to refuse (ScriptNotFound), not the parser's
    assert parse(preScriptLocation="rel/pre").pre_script == "rel/pre"
    assert error({"preScriptLocation": "/p", "postScriptLocation": "/q\0x"}) == (
        '/etc/c.json: postScriptLocation must be without a NUL byte, not the string "/q\\u0000x"')
    assert parse(preScriptLocation="").pre_script == ""   # empty: the policy says "empty"
    # both problems of one file in one message, in field order
    assert error({"preScriptLocation": 1, "postScriptLocation": 2}) == (
        "/etc/c.json: preScriptLocation must be a string, not 1; "
        "postScriptLocation must be a string, not 2")


def test_long_wrong_value_is_cut_in_the_message():
    msg = error({**BASE, "preScriptNoOfRetries": "x" * 200})
    assert msg == '/etc/c.json: preScriptNoOfRetries must be %s, not the string "%s...' % (
        RETRIES, "x" * 56)
    # 60 characters are shown whole
    assert error({**BASE, "preScriptNoOfRetries": "x" * 58}).endswith('"%s"' % ("x" * 58))


def test_unknown_fields_are_warnings():
    c = parse(extra=1, other=2)
    assert c.warnings == ["/etc/c.json: unknown field 'extra' ignored",
                          "/etc/c.json: unknown field 'other' ignored"]


def test_malformed_documents():
    assert error(b"\xef\xbb\xbf" + json.dumps(BASE).encode()[:-1]).startswith(
        "/etc/c.json: not valid JSON: Expecting")
    assert C.parse_config(b"\xef\xbb\xbf" + json.dumps(BASE).encode()).pre_script == "/p"
    assert error(b'{"a": \xff}') == "/etc/c.json: not UTF-8 text (byte 6)"
    assert error(b"") == "/etc/c.json: not valid JSON: Expecting value at line 1 column 1"
    assert error(b'{"a": 1,\n "b": }') == (
        "/etc/c.json: not valid JSON: Expecting value at line 2 column 7")
    assert error(b'{"a": NaN}') == "/etc/c.json: not valid JSON: NaN is not valid JSON"
    assert error(b'{"a": -Infinity}') == "/etc/c.json: not valid JSON: -Infinity is not valid JSON"
    assert error(b'{"a": 1, "a": 2}') == "/etc/c.json: not valid JSON: duplicate key 'a'"
    assert error(b"[1]") == "/etc/c.json: the top level must be a JSON object, not an array"
    assert error(b"[" * 100000) == "/etc/c.json: nested too deeply to be a configuration file"
    assert C.parse_config(json.dumps(BASE).encode()).path == "<config>"


def test_size_limit_to_the_byte():
    body = json.dumps(BASE).encode()
    exact = body + b" " * (C.MAX_CONFIG_BYTES - len(body))
    assert C.parse_config(exact, "/c").pre_script == "/p"
    assert error(exact + b" ", "/c") == (
        "/c: larger than 1048576 bytes; not a configuration file")


def test_read_config_file(tmp_path):
    assert C.read_config_file(str(tmp_path / "absent")) is None
    f = tmp_path / "c.json"
    f.write_bytes(b"x" * (3 * C.MAX_CONFIG_BYTES))
    data, st = C.read_config_file(str(f))
    assert C.MAX_CONFIG_BYTES < len(data) <= C.MAX_CONFIG_BYTES + 65536   # bounded read
    assert st.st_size == 3 * C.MAX_CONFIG_BYTES
    f.write_bytes(b"{}")
    assert C.read_config_file(str(f))[0] == b"{}"
    with pytest.raises(ConfigError, match="^%s: not a regular file$" % tmp_path):
        C.read_config_file(str(tmp_path))
    os.symlink("loop", tmp_path / "loop")
    with pytest.raises(ConfigError) as ei:
        C.read_config_file(str(tmp_path / "loop"))
    assert str(ei.value) == ("%s/loop: cannot open the configuration file: Too many levels of "
                             "symbolic links" % tmp_path)


def test_a_fifo_is_refused_at_once(tmp_path):
    # opened non-blocking: a FIFO at the configured path must not hang the run
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        C.read_config_file(str(fifo))


def test_load_config(tmp_path):
    with pytest.raises(FileNotFoundError):
        C.load_config(str(tmp_path / "absent"))
    f = tmp_path / "c.json"
    f.write_text(json.dumps(BASE))
    assert C.load_config(str(f)).post_script == "/q"
