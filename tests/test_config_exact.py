"""The configuration parser's exact answers: defaults, each field's check
at its boundaries, the size limit to the byte, and every error message
(they name the file and the field).  Fast, no root: for `make mutants`."""

from __future__ import annotations

import dataclasses
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
    assert (c.metrics_file, c.dirty_cap_mib, c.azure_differences) == (None, 64, [])


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
    ("presyncGentle", "presync_gentle", False, "yes", 'true or false, not the string "yes"'),
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


# -- Azure's forms: accepted with their meaning, and what Azure would do instead ----------

CONTINUE_AZURE = ("read any non-empty string as true%s: with a missing or refused script the "
                  "backup goes on, and with a failed or timed-out script its extension stops "
                  "with an error (it cannot combine true with a string): no snapshot, no "
                  "post-script")
RETRY_AZURE = ("keep the string: a script that succeeds at once is unaffected, but after a "
               "failure its retry check compares a number with a string and fails, the result "
               "never arrives, and Azure reports PluginhostPreTimeout/PluginhostPostTimeout "
               "(310/311) after waiting out the whole timeout, without retrying")
NO_RETRY_AZURE = ("never run the script again (its retry loop only polls the process that "
                  "already exited): one attempt in all")
TIMEOUT_AZURE = ("fail on the string (its min() of a string and a number raises): "
                 "PluginhostConfigParsing (304), scripts skipped, a filesystem-consistent backup")


def differences(cfg):
    return [(d.topic, d.where, d.azure, d.vmsnap, d.warn) for d in cfg.azure_differences]


def parse_timed(**fields):
    # timeoutInSeconds set: no timeout-default difference in the way
    return parse(**{"timeoutInSeconds": 30, **fields})


@pytest.mark.parametrize("name,value,meaning,azure", [
    ("continueBackupOnFailure", " False ", False, CONTINUE_AZURE % ' (so "false" is true)'),
    ("continueBackupOnFailure", "true", True, CONTINUE_AZURE % ""),
    ("fsFreezeEnabled", "false", False, "read any non-empty string as true: it would freeze anyway"),
    ("fsFreezeEnabled", "TRUE", True, "read any non-empty string as true: it would freeze"),
])
def test_string_booleans(name, value, meaning, azure):
    c = parse_timed(**{name: value})
    assert getattr(c, C.FIELDS[name][0]) is meaning
    vmsnap = "reads the string %s as %s" % (json.dumps(value), json.dumps(meaning))
    assert differences(c) == [("string-boolean", name, azure, vmsnap, True)]
    assert c.warnings == ["/etc/c.json: %s: %s; Azure would %s" % (name, vmsnap, azure)]


@pytest.mark.parametrize("name,value", [("continueBackupOnFailure", 0), ("fsFreezeEnabled", 1)])
def test_number_booleans(name, value):
    c = parse_timed(**{name: value})
    word = json.dumps(bool(value))
    assert getattr(c, C.FIELDS[name][0]) is bool(value)
    assert differences(c) == [("number-boolean", name, "read %d as %s too: write %s"
                               % (value, word, word), "reads %d as %s" % (value, word), True)]
    assert c.warnings == ["/etc/c.json: %s: reads %d as %s; Azure would read %d as %s too: "
                          "write %s" % (name, value, word, value, word, word)]


def test_vmsnap_fields_take_no_azure_forms():
    assert error({**BASE, "expediteRcu": "true"}) == (
        '/etc/c.json: expediteRcu must be true or false, not the string "true"')
    assert error({**BASE, "expediteRcu": 1}) == (
        "/etc/c.json: expediteRcu must be true or false, not 1")
    assert error({**BASE, "freezeTimeoutInSeconds": "5"}) == (
        '/etc/c.json: freezeTimeoutInSeconds must be %s, not the string "5"' % SECONDS)


def test_retries_as_strings_and_whole_floats():
    c = parse_timed(preScriptNoOfRetries=" 2 ")
    assert c.pre_retries == 2 and type(c.pre_retries) is int
    assert differences(c) == [
        ("string-number", "preScriptNoOfRetries", RETRY_AZURE, 'reads the string " 2 " as 2', True),
        ("retries", "preScriptNoOfRetries", NO_RETRY_AZURE,
         "runs the script again after a failure, up to 2 more times", False)]
    assert c.warnings == ['/etc/c.json: preScriptNoOfRetries: reads the string " 2 " as 2; '
                          'Azure would ' + RETRY_AZURE]
    c = parse_timed(postScriptNoOfRetries=1.0)
    assert c.post_retries == 1 and type(c.post_retries) is int and c.warnings == []
    assert differences(c) == [("retries", "postScriptNoOfRetries", NO_RETRY_AZURE,
                               "runs the script again after a failure, up to 1 more time", False)]
    c = parse_timed(postScriptNoOfRetries="1000")
    assert c.post_retries == 1000 and [d[0] for d in differences(c)] == ["string-number", "retries"]
    e = pytest.raises(ConfigError, C.parse_config, json.dumps(
        {**BASE, "postScriptNoOfRetries": "1001"}).encode(), "/etc/c.json").value
    assert str(e) == '/etc/c.json: postScriptNoOfRetries must be %s, not the string "1001"' % RETRIES
    assert e.azure_differences == [] and e.warnings == []
    assert error({**BASE, "preScriptNoOfRetries": 2.5}) == (
        "/etc/c.json: preScriptNoOfRetries must be %s, not 2.5" % RETRIES)
    assert error({**BASE, "preScriptNoOfRetries": "-1"}) == (
        '/etc/c.json: preScriptNoOfRetries must be %s, not the string "-1"' % RETRIES)
    assert error({**BASE, "preScriptNoOfRetries": "1e3"}) == (
        '/etc/c.json: preScriptNoOfRetries must be %s, not the string "1e3"' % RETRIES)


@pytest.mark.parametrize("text,value", [("45", 45.0), (" 2.5 ", 2.5)])
def test_timeout_as_a_string(text, value):
    c = parse(timeoutInSeconds=text)
    assert c.timeout == value and type(c.timeout) is float
    vmsnap = "reads the string %s as %s seconds" % (json.dumps(text), text.strip())
    assert differences(c) == [("string-number", "timeoutInSeconds", TIMEOUT_AZURE, vmsnap, True)]
    assert c.warnings == ["/etc/c.json: timeoutInSeconds: %s; Azure would %s"
                          % (vmsnap, TIMEOUT_AZURE)]


def test_timeout_strings_that_are_not_plain_numbers_are_refused():
    for text in ("1e3", "-5", "0", "", "4.", "0x10"):
        assert error({**BASE, "timeoutInSeconds": text}) == (
            "/etc/c.json: timeoutInSeconds must be %s, not the string %s" % (
                SECONDS, json.dumps(text)))


def test_the_azure_timeout_cap():
    assert differences(parse(timeoutInSeconds=1800)) == [] and parse(timeoutInSeconds=1800).warnings == []
    c = parse(timeoutInSeconds=1800.5)
    azure = ("cap it at 1800 seconds (its plugin host's limit): a script still running then "
             "is a timeout")
    assert differences(c) == [("timeout-cap", "timeoutInSeconds", azure, "keeps 1800.5 seconds", True)]
    assert c.warnings == ["/etc/c.json: timeoutInSeconds: keeps 1800.5 seconds; Azure would " + azure]
    # the freeze timeout is vmsnap's own: no cap
    assert [d[0] for d in differences(parse_timed(freezeTimeoutInSeconds=3600))] == ["vmsnap-only"]


def test_absent_timeout_and_retries_are_listed_for_check_azure_only():
    c = parse(preScriptNoOfRetries=1, postScriptNoOfRetries=2)
    assert c.warnings == []
    assert differences(c) == [
        ("timeout-default", "timeoutInSeconds", "use 10 seconds (its ScriptRunner's default; "
         "Microsoft's README says 30)", "uses 30 seconds (absent)", False),
        ("retries", "preScriptNoOfRetries", NO_RETRY_AZURE,
         "runs the script again after a failure, up to 1 more time", False),
        ("retries", "postScriptNoOfRetries", NO_RETRY_AZURE,
         "runs the script again after a failure, up to 2 more times", False)]
    assert differences(parse_timed()) == []


def test_vmsnap_only_fields_are_listed_in_field_order():
    c = parse_timed(presyncDirtyCapMiB=0, presyncGentle=True, metricsFile="/m", expediteRcu=True, hooksDirectory="/h",
                    mountsToFreeze=["/"], mountsToSkip=[], freezeTimeoutInSeconds=5)
    assert differences(c) == [("vmsnap-only", name, "ignore it (%s)" % why, "uses it", False)
                              for name, why in C.VMSNAP_ONLY_FIELDS.items()]
    assert list(C.VMSNAP_ONLY_FIELDS.items()) == [
        ("freezeTimeoutInSeconds", "its freeze helper has its own limit"),
        ("mountsToSkip", "it freezes every filesystem it handles"),
        ("mountsToFreeze", "it freezes every filesystem it handles"),
        ("hooksDirectory", "it has no hooks"),
        ("expediteRcu", "it does not speed up the freeze"),
        ("metricsFile", "it writes no metrics"),
        ("presyncDirtyCapMiB", "it flushes without a cap"),
        ("presyncGentle", "it flushes everything at once, right before the freeze")]
    assert [d.to_dict() for d in c.azure_differences][:1] == [
        {"topic": "vmsnap-only", "where": "freezeTimeoutInSeconds",
         "azure": "ignore it (its freeze helper has its own limit)", "vmsnap": "uses it"}]
    assert (c.metrics_file, c.dirty_cap_mib, c.warnings) == ("/m", 0, [])


def test_numbers_in_params():
    c = parse_timed(preScriptParams=[1, 2.5, "x"])
    assert c.pre_params == ["1", "2.5", "x"] and differences(c) == []
    assert c.warnings == [
        "/etc/c.json: preScriptParams[0]: the number 1 is passed as the argument '1', as Azure "
        "passes it; write it as a string",
        "/etc/c.json: preScriptParams[1]: the number 2.5 is passed as the argument '2.5', as "
        "Azure passes it; write it as a string"]
    assert error({**BASE, "postScriptParams": ["a", True]}) == (
        "/etc/c.json: postScriptParams must be an array of strings (item 1 is true), not an array")
    assert error(b'{"preScriptLocation": "/p", "postScriptLocation": "/q", '
                 b'"preScriptParams": [1e999]}') == (
        "/etc/c.json: preScriptParams must be an array of strings (item 0 is Infinity), "
        "not an array")
    assert error({**BASE, "preScriptParams": ["a\0"]}) == (
        "/etc/c.json: preScriptParams must be without a NUL byte, not an array")


def test_a_lone_surrogate_is_refused():
    assert error(b'{"preScriptLocation": "/p\\ud800", "postScriptLocation": "/q"}') == (
        "/etc/c.json: preScriptLocation must be valid Unicode text (it holds a lone surrogate "
        'such as \\ud800, which no program can receive), not the string "/p\\ud800"')


def test_azure_only_fields_are_explained():
    c = parse_timed(ScriptsExecutionPollTimeSeconds=3, appName="x")
    assert c.warnings == [
        "/etc/c.json: ScriptsExecutionPollTimeSeconds: " + C.AZURE_ONLY_FIELDS[
            "ScriptsExecutionPollTimeSeconds"],
        "/etc/c.json: appName: Azure only sends it to its telemetry: ignored"]
    assert C.AZURE_ONLY_FIELDS["ScriptsExecutionPollTimeSeconds"] == (
        "Azure checks its scripts every 1-5 s (this field, default 3); vmsnap waits on each "
        "script's exit directly and reacts within milliseconds, so it has no poll interval: "
        "ignored")
    assert differences(c) == [(
        "poll-time", "ScriptsExecutionPollTimeSeconds", "look at a running script only every "
        "1-5 s (3 unless this field says 1 to 5): each script's end is seen up to that late, "
        "and its timeout counts in those steps", "waits on each script's exit directly", False)]
    assert differences(parse_timed(appName="x")) == []


def test_slips_in_field_names():
    doc = {"PreScriptLocation": "/x", "postScriptLocation": "/q"}
    e = pytest.raises(ConfigError, C.parse_config, json.dumps(doc).encode(), "/c").value
    hint = "unknown field 'PreScriptLocation': did you mean 'preScriptLocation'? (field names are case-sensitive)"
    assert str(e) == ("/c: preScriptLocation is required (the file has 'PreScriptLocation': "
                      "field names are case-sensitive); " + hint)
    assert e.warnings == ["/c: " + hint]
    # a close spelling, and a slip whose real field is also there (then merely unknown)
    assert parse(timeoutInSecond=5).warnings == [
        "/etc/c.json: unknown field 'timeoutInSecond': did you mean 'timeoutInSeconds'? "
        "(field names are case-sensitive)"]
    assert parse_timed(timeoutInSecond=5).warnings == [
        "/etc/c.json: unknown field 'timeoutInSecond' ignored"]
    assert C.did_you_mean("APPNAME") == "appName"
    assert C.did_you_mean("scriptsexecutionpolltimeseconds") == "ScriptsExecutionPollTimeSeconds"
    assert C.did_you_mean("preScriptLocaton") == "preScriptLocation"
    assert C.did_you_mean("preScript") is None and C.did_you_mean("zzz") is None


def test_an_empty_freeze_list_says_nothing_is_frozen():
    c = parse_timed(mountsToFreeze=[])
    assert c.mounts_to_freeze == [] and c.warnings == [
        "/etc/c.json: mountsToFreeze is an empty list: no filesystem will be frozen (leave the "
        "field out to freeze every eligible filesystem)"]


@pytest.mark.parametrize("value,ok", [
    (0, True), (15, False), (16, True), (1 << 20, True), ((1 << 20) + 1, False), (True, False),
    (64.0, False), (-16, False)])
def test_dirty_cap_bounds(value, ok):
    if ok:
        assert parse(presyncDirtyCapMiB=value).dirty_cap_mib == value
    else:
        assert error({**BASE, "presyncDirtyCapMiB": value}) == (
            "/etc/c.json: presyncDirtyCapMiB must be 0 (no cap) or an integer from 16 to "
            "1048576 (MiB), not %s" % json.dumps(value))


def test_seconds_on_the_command_line():
    assert C.seconds_option("2.5") == 2.5 and C.seconds_option("2592000") == 2592000.0
    assert C.seconds_option("0.5") == 0.5 and C.seconds_option("1e-9") == 1e-9
    for text, why in (("abc", "'abc' is not a number"),
                      ("0", "must be a number of seconds > 0 and at most 2592000 (30 days), not '0'"),
                      ("2592001", "must be a number of seconds > 0 and at most 2592000 (30 days), "
                                  "not '2592001'"),
                      ("nan", "must be a number of seconds > 0 and at most 2592000 (30 days), "
                              "not 'nan'")):
        with pytest.raises(ValueError) as ei:
            C.seconds_option(text)
        assert str(ei.value) == why


def test_describe_and_json_type():
    assert [C.json_type(v) for v in (None, True, 1, 1.5, "s", [], {})] == [
        "null", "boolean", "number", "number", "string", "array", "object"]
    assert C.describe("x" * 58) == 'the string "%s"' % ("x" * 58)   # 60 characters: whole
    assert C.describe("x" * 59) == 'the string "%s...' % ("x" * 56)
    assert C.describe({}) == "an object" and C.describe(False) == "false"


def test_full_paths_and_text_in_vmsnap_fields():
    for name in ("hooksDirectory", "metricsFile"):
        assert error({**BASE, name: "rel/x"}) == (
            '/etc/c.json: %s must be a full path (starting with /), not the string "rel/x"' % name)
        assert error({**BASE, name: 7}) == (
            "/etc/c.json: %s must be a string (a full path), not 7" % name)
    assert error({**BASE, "mountsToSkip": ["/a\0"]}) == (
        "/etc/c.json: mountsToSkip must be without a NUL byte, not an array")
    assert error(b'{"preScriptLocation": "/p", "postScriptLocation": "/q", '
                 b'"postScriptNoOfRetries": 1e999}') == (
        "/etc/c.json: postScriptNoOfRetries must be %s, not Infinity" % RETRIES)


def test_a_difference_is_a_value():
    d = parse(timeoutInSeconds=3600).azure_differences[0]
    assert d == C.AzureDifference("timeout-cap", "timeoutInSeconds", d.azure, "keeps 3600 seconds")
    assert len({d, C.AzureDifference(*d.to_dict().values())}) == 1   # frozen: hashable
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.warn = False
