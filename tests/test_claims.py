"""README rows that had no test of their own: each test here names the row
it proves.  (Rows about the decision table not covered in test_cycle.py,
and the 304 check on a really broken install.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

import vmsnap_native as vmsnap
from vmsnap_native.config import Config

from .conftest import frozen_state, root_only
from .helpers import codes, run_json, setup_scripts

pytestmark = root_only


def shut_down(mountpoint):
    """Puts an ext4 in the shut-down state: its FIFREEZE then fails with EIO."""
    if shutil.which("xfs_io") is None:
        pytest.skip("xfs_io (xfsprogs) is not installed")
    subprocess.run(["xfs_io", "-x", "-c", "shutdown", mountpoint], check=True)


# README: "no configuration file | no scripts | filesystem (crash if freeze disabled) | success"
def test_no_config_file_and_freeze_disabled_is_crash_consistent_success(loopfs):
    # without a file, freezing can only be switched off through the API: a
    # Config with no scripts is the same "no configuration file" row
    (m,) = loopfs.make(1)
    seen = {}

    def snapshot():
        seen["frozen"] = frozen_state(m)

    res = vmsnap.run(config=Config(fs_freeze_enabled=False), snapshot=snapshot, mounts=[m])
    assert res.status == "success" and res.errors == [], res.to_dict()
    assert res.consistency == "crash"
    assert res.pre_script is None and res.freeze.enabled is False
    assert seen == {"frozen": False}, "frozen although the freeze was disabled"


# README: "a filesystem cannot be opened or frozen | all thawed; snapshot if
# continueBackupOnFailure or one disk | crash | degraded / failed" — `false`, one disk
def test_freeze_failure_continue_false_one_disk_snapshots_anyway(tmp_path, loopfs):
    good, bad = loopfs.make(2)
    shut_down(bad)
    cfg = setup_scripts(tmp_path, continueBackupOnFailure=False)
    snap = tmp_path / "snap"
    rc, res, _ = run_json(tmp_path, cfg, [bad], snapshot=["touch", str(snap)])
    assert codes(res) == ["FsFreezeFailed"] and bad in res["errors"][0]["message"]
    assert res["consistency"] == "crash" and res["status"] == "degraded" and rc == 3, res
    assert snap.exists(), "one disk: the snapshot is taken anyway"
    # the contrast, two disks: no snapshot (test_cycle's several-disks test, same set-up)
    rc, res, _ = run_json(tmp_path, cfg, [good, bad], snapshot=["touch", str(tmp_path / "two")])
    assert rc == 1 and res["status"] == "failed" and not (tmp_path / "two").exists()
    assert not frozen_state(good)


# README: "post-script fails or times out | the snapshot stands | unchanged |
# degraded / failed (`false`)" — the timeout, with `false`
def test_post_timeout_continue_false_fails_and_the_snapshot_stands(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    snap = tmp_path / "snap"
    cfg = setup_scripts(tmp_path, post="sleep 30", timeoutInSeconds=0.5,
                        continueBackupOnFailure=False)
    rc, res, _ = run_json(tmp_path, cfg, [m], snapshot=["touch", str(snap)])
    assert codes(res) == ["Post-ScriptTimeout"] and rc == 1 and res["status"] == "failed", res
    assert res["consistency"] == "application" and snap.exists()
    assert res["post_script"]["timed_out"] is True


# README: "`IncorrectPluginhostFile` | 304 | the native core cannot be loaded
# or is another version: reinstall" — on a really broken install, not a switch
@pytest.fixture
def installed_copy():
    """A copy of the installed package, world-readable, to break on purpose."""
    import vmsnap_native
    base = tempfile.mkdtemp(prefix="vmsnap-broken-")
    shutil.copytree(os.path.dirname(vmsnap_native.__file__), os.path.join(base, "vmsnap_native"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    try:
        yield os.path.join(base, "vmsnap_native")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_copy(package_dir, tmp_path, mount):
    code = ("import sys; sys.path.insert(0, %r); from vmsnap_native.cli import main; "
            "sys.exit(main(sys.argv[1:]))" % os.path.dirname(package_dir))
    p = subprocess.run([sys.executable, "-c", code, "run", "--json", "--log-file", "",
                        "--config", str(tmp_path / "none"), "--mount", mount],
                       capture_output=True, text=True, timeout=60, cwd="/")
    return p.returncode, json.loads(p.stdout), p


@pytest.mark.parametrize("damage", ["not an ELF .so", "empty .so", "another version"])
def test_broken_install_is_304_and_nothing_frozen(tmp_path, loopfs, installed_copy, damage):
    (m,) = loopfs.make(1)
    # (an ELF cut short after its headers is not here: dlopen dies of SIGBUS on it)
    if damage.endswith(".so"):
        (so,) = [f for f in os.listdir(installed_copy) if f.startswith("_vmsnap_core")
                 and f.endswith(".so")]
        with open(os.path.join(installed_copy, so), "wb") as f:
            f.write(b"" if damage == "empty .so" else b"<html>502 Bad Gateway</html>\n")
    else:
        with open(os.path.join(installed_copy, "_version.py"), "w") as f:
            f.write('__version__ = "0.0.1-other"\n')
    rc, res, p = run_copy(installed_copy, tmp_path, m)
    assert rc == 1 and codes(res) == ["IncorrectPluginhostFile"], (res, p.stderr)
    assert res["errors"][0]["number"] == 304 and "reinstall" in res["errors"][0]["action"]
    assert "Traceback" not in p.stderr
    assert not frozen_state(m)
