"""Permission policy (SPEC §2), on real files with real owners."""

from __future__ import annotations

import os

import pytest

from vmsnap_native import policy

from .conftest import IS_ROOT
from .helpers import write_script

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root to own files as root")
NOBODY = 65534


@pytest.fixture
def safe_dir(tmp_path):
    d = tmp_path / "scripts"
    d.mkdir()
    os.chmod(d, 0o755)
    return d


def test_700_script_runs_directly(safe_dir):
    chk = policy.check_script(write_script(safe_dir / "a", "exit 0"), "pre")
    assert chk.ok and chk.argv_prefix == (str(safe_dir / "a"),)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_600_and_400_run_through_sh(safe_dir, mode):
    chk = policy.check_script(write_script(safe_dir / "a", "exit 0", mode=mode), "pre")
    assert chk.ok and chk.argv_prefix == ("/bin/sh", str(safe_dir / "a"))


@pytest.mark.parametrize("mode", [0o750, 0o705, 0o720, 0o702, 0o4700, 0o2700])
def test_group_other_or_setid_bits_refused(safe_dir, mode):
    chk = policy.check_script(write_script(safe_dir / "a", "exit 0", mode=mode), "post")
    assert chk.problem.code == "InsufficientPermissionforPost-Script"
    assert oct(mode)[2:] in chk.problem.message


def test_non_root_owner_refused(safe_dir):
    p = write_script(safe_dir / "a", "exit 0")
    os.chown(p, NOBODY, NOBODY)
    chk = policy.check_script(p, "pre")
    assert chk.problem.code == "InsufficientPermissionforPre-Script"
    assert "uid 65534" in chk.problem.message


def test_writable_parent_directory_refused(tmp_path):
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    chk = policy.check_script(write_script(d / "a", "exit 0"), "pre")
    assert chk.problem.code == "InsufficientPermissionforPre-Script"
    assert "writable by group or others" in chk.problem.message and str(d) in chk.problem.message


def test_directory_owned_by_someone_else_refused(tmp_path):
    d = tmp_path / "theirs"
    d.mkdir()
    os.chmod(d, 0o755)
    p = write_script(d / "a", "exit 0")
    os.chown(d, NOBODY, NOBODY)
    chk = policy.check_script(p, "pre")
    assert chk.problem and "owned by uid 65534" in chk.problem.message


def test_sticky_world_writable_directory_accepted(tmp_path):
    d = tmp_path / "sticky"
    d.mkdir()
    os.chmod(d, 0o1777)
    assert policy.check_script(write_script(d / "a", "exit 0"), "pre").ok


def test_symlink_to_non_root_file_refused(safe_dir, tmp_path):
    target = write_script(safe_dir / "real", "exit 0")
    os.chown(target, NOBODY, NOBODY)
    link = safe_dir / "link"
    os.symlink(target, link)
    chk = policy.check_script(str(link), "pre")
    assert chk.problem.code == "InsufficientPermissionforPre-Script"


def test_symlink_into_unsafe_directory_refused(safe_dir, tmp_path):
    bad = tmp_path / "attacker"
    bad.mkdir()
    os.chown(bad, NOBODY, NOBODY)
    target = write_script(bad / "evil", "exit 0")   # root-owned file, attacker's directory
    os.symlink(target, safe_dir / "link")
    chk = policy.check_script(str(safe_dir / "link"), "pre")
    assert chk.problem and str(bad) in chk.problem.message


def test_symlink_to_safe_file_accepted_and_keeps_configured_path(safe_dir):
    target = write_script(safe_dir / "real", "exit 0")
    os.symlink("real", safe_dir / "link")
    chk = policy.check_script(str(safe_dir / "link"), "pre")
    assert chk.ok and chk.resolved == target and chk.argv_prefix == (str(safe_dir / "link"),)


def test_missing_script(safe_dir):
    chk = policy.check_script(str(safe_dir / "nope"), "post")
    assert chk.problem.code == "Post-ScriptNotFound"
    assert policy.check_script("", "pre").problem.code == "Pre-ScriptNotFound"


def test_config_file_permissions(tmp_path):
    p = tmp_path / "c.json"
    p.write_text("{}")
    for mode, ok in ((0o600, True), (0o400, True), (0o640, False), (0o604, False), (0o700, False)):
        os.chmod(p, mode)
        assert (policy.check_config_stat(os.stat(p), str(p)) is None) is ok, oct(mode)
    os.chmod(p, 0o600)
    os.chown(p, NOBODY, 0)
    prob = policy.check_config_stat(os.stat(p), str(p))
    assert prob.code == "InsufficientPermissionforJSONConfigFile"
