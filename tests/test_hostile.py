"""Hostile input: an unprivileged user trying to change what runs as root,
and configuration files made of arbitrary bytes."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import root_only
from .helpers import codes, run_json, vmsnap, write_config, write_script

pytestmark = root_only
ATTACKER = "vmsnap-attacker"


@pytest.fixture(scope="module")
def attacker():
    try:
        pw = pwd.getpwnam(ATTACKER)
    except KeyError:
        if shutil.which("useradd") is None:
            pytest.skip("useradd is not available")
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", ATTACKER],
                       check=True)
        pw = pwd.getpwnam(ATTACKER)
    return pw


def as_attacker(script):
    return subprocess.Popen(["runuser", "-u", ATTACKER, "--", "sh", "-c", script],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def stop(proc):
    os.killpg(proc.pid, 9)
    proc.wait()


def traversable(tmp_path):
    # the attacker must be able to reach its own directories below tmp_path
    p = tmp_path
    while str(p) != "/":
        os.chmod(p, os.stat(p).st_mode | 0o005)
        p = p.parent


def evil_script(path, marker):
    write_script(path, "touch %s" % marker, mode=0o755)


def config_for(tmp_path, pre):
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    post = write_script(etc / "post.sh", "exit 0")
    return write_config(etc / "c.json", preScriptLocation=str(pre), postScriptLocation=post,
                        hooksDirectory=str(tmp_path / "nohooks"))


def test_symlink_into_a_directory_the_attacker_owns(tmp_path, attacker, loopfs):
    (m,) = loopfs.make(1)
    traversable(tmp_path)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, attacker.pw_uid, attacker.pw_gid)
    safe = tmp_path / "safe"
    safe.mkdir(mode=0o755)
    good = write_script(safe / "pre.sh", "touch %s" % (tmp_path / "good-ran"))
    # a root-owned link in a safe place that points into the attacker's directory
    os.symlink(theirs / "pre.sh", safe / "link")
    marker = tmp_path / "pwned"
    racer = as_attacker("while :; do ln -sf %s %s/pre.sh; ln -sf %s %s/evil; "
                        "cp /bin/true %s/pre.sh 2>/dev/null; done" % (good, theirs, good, theirs, theirs))
    try:
        cfg = config_for(tmp_path, safe / "link")
        for _ in range(5):
            rc, res, _ = run_json(tmp_path, cfg, [m])
            assert codes(res) in (["InsufficientPermissionforPre-Script"], ["Pre-ScriptNotFound"])
            assert str(theirs) in res["errors"][0]["message"] or res["errors"][0]["code"] == \
                "Pre-ScriptNotFound"
    finally:
        stop(racer)
    assert not marker.exists()


def test_writable_directory_on_the_path(tmp_path, attacker, loopfs):
    (m,) = loopfs.make(1)
    d = tmp_path / "shared"
    d.mkdir()
    os.chown(d, 0, attacker.pw_gid)
    os.chmod(d, 0o775)   # group-writable: the attacker's group could swap the file
    pre = write_script(d / "pre.sh", "exit 0")
    rc, res, _ = run_json(tmp_path, config_for(tmp_path, pre), [m])
    assert codes(res) == ["InsufficientPermissionforPre-Script"]
    assert "writable by group or others" in res["errors"][0]["message"]


def test_race_in_a_sticky_directory_only_the_checked_file_runs(tmp_path, attacker, loopfs):
    # /tmp-like: world-writable and sticky.  The root-owned script there can be
    # neither renamed nor replaced by the attacker, however hard it tries.
    (m,) = loopfs.make(1)
    traversable(tmp_path)
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    good_marker = tmp_path / "good"
    pre = write_script(sticky / "pre.sh", "echo ran >> %s" % good_marker)
    evil_dir = tmp_path / "evil"
    evil_dir.mkdir()
    os.chown(evil_dir, attacker.pw_uid, attacker.pw_gid)
    marker = tmp_path / "pwned"
    racer = as_attacker(
        "printf '#!/bin/sh\\ntouch %s\\n' > %s/x; chmod 755 %s/x; while :; do "
        "mv -f %s/x %s 2>/dev/null; ln -sf %s/x %s 2>/dev/null; rm -f %s 2>/dev/null; done"
        % (marker, evil_dir, evil_dir, evil_dir, pre, evil_dir, pre, pre))
    try:
        time.sleep(0.2)
        cfg = config_for(tmp_path, pre)
        for _ in range(10):
            rc, res, _ = run_json(tmp_path, cfg, [m])
            assert rc == 0, res["errors"]
    finally:
        stop(racer)
    assert not marker.exists(), "the attacker's file ran as root"
    assert good_marker.read_text().count("ran") == 10


def test_script_owned_by_the_attacker_and_setuid(tmp_path, attacker, loopfs):
    (m,) = loopfs.make(1)
    etc = tmp_path / "s"
    etc.mkdir(mode=0o755)
    pre = write_script(etc / "pre.sh", "exit 0")
    os.chown(pre, attacker.pw_uid, attacker.pw_gid)
    os.chmod(pre, 0o700)
    rc, res, _ = run_json(tmp_path, config_for(tmp_path, pre), [m])
    assert codes(res) == ["InsufficientPermissionforPre-Script"] and "not root" in \
        res["errors"][0]["message"]
    os.chown(pre, 0, 0)
    os.chmod(pre, 0o4700)
    rc, res, _ = run_json(tmp_path, config_for(tmp_path, pre), [m])
    assert "setuid" in res["errors"][0]["message"]


def test_config_owned_by_the_attacker(tmp_path, attacker, loopfs):
    (m,) = loopfs.make(1)
    cfg = config_for(tmp_path, write_script(tmp_path / "pre.sh", "exit 0"))
    os.chown(cfg, attacker.pw_uid, attacker.pw_gid)
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert codes(res) == ["InsufficientPermissionforJSONConfigFile"]
    assert res["pre_script"] is None


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"{}", b"[]", b"null", b'{"preScriptLocation": 1e999}',
                     b'{"a":' * 5000 + b'1' + b'}' * 5000, b'\xef\xbb\xbf{"x": 1}',
                     b'{"preScriptLocation": "/nonexistent", "postScriptLocation": "\\u0000"}']),
))
def test_any_config_bytes_through_the_cli_never_traceback(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("fuzz")
    cfg = d / "c.json"
    cfg.write_bytes(data)
    os.chmod(cfg, 0o600)
    p = vmsnap("run", "--dry-run", "--json", "--config", str(cfg), "--log-file", "")
    assert "Traceback" not in p.stderr, p.stderr
    res = json.loads(p.stdout)
    assert p.returncode in (0, 3)
    assert all(e["code"] in ("IncorrectJSONConfigFile", "Pre-ScriptNotFound",
                             "Post-ScriptNotFound", "InsufficientPermissionforPre-Script",
                             "InsufficientPermissionforPost-Script") for e in res["errors"])
    p = vmsnap("check", "--json", "--config", str(cfg))
    assert "Traceback" not in p.stderr and p.returncode in (0, 1)
