"""`vmsnap demo`: the newcomer's first command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from .conftest import root_only


@root_only
def test_demo_proves_the_restored_copy(tmp_path):
    p = subprocess.run([sys.executable, "-m", "vmsnap_native", "demo", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["ok"] is True
    v = report["verify"]
    assert v["integrity"] == "ok" and v["rows"] == v["paused_rows"] > 0
    assert report["result"]["consistency"] == "application"
    assert [ph["phase"] for ph in report["result"]["phases"]] == [
        "pre-script", "freeze", "snapshot", "thaw", "post-script"]
    assert "freeze window" in p.stderr and "integrity_check ok" in p.stderr
    assert not os.path.exists(report["sandbox"]), "the sandbox was not cleaned up"


@root_only
def test_demo_keep_leaves_the_sandbox(tmp_path):
    p = subprocess.run([sys.executable, "-m", "vmsnap_native", "demo", "--keep", "--json"],
                       capture_output=True, text=True, timeout=300)
    report = json.loads(p.stdout)
    try:
        assert p.returncode == 0
        assert os.path.exists(os.path.join(report["sandbox"], "snapshot.img"))
        assert os.path.exists(os.path.join(report["sandbox"], "vmsnap.log"))
        mounts = open("/proc/self/mountinfo").read()
        assert report["sandbox"] not in mounts, "--keep keeps files, not mounts"
    finally:
        shutil.rmtree(report["sandbox"], ignore_errors=True)


def run_unprivileged(cli_args):
    """Runs the CLI with CLI_ARGS as an unprivileged user (nobody); skips
    where that user cannot read the test environment."""
    if os.geteuid() != 0:
        return subprocess.run([sys.executable, "-m", "vmsnap_native", *cli_args],
                              capture_output=True, text=True, timeout=60)
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        sys.executable, "-c",
                        "import sys; sys.path[:0] = %r; from vmsnap_native.cli import main; "
                        "sys.exit(main(%r))" % (sys.path, list(cli_args))],
                       capture_output=True, text=True, timeout=60, cwd="/")
    if "ModuleNotFoundError" in p.stderr or "Permission denied" in p.stderr:
        pytest.skip("the test environment is not readable by an unprivileged user")
    return p


def test_demo_without_root_says_what_is_needed():
    p = run_unprivileged(["demo"])
    assert p.returncode == 1 and "needs root" in p.stderr and "Traceback" not in p.stderr


def test_run_without_root_says_so_without_a_traceback():
    p = run_unprivileged(["run", "--mount", "/nonexistent"])
    assert p.returncode == 1 and "needs root" in p.stderr and "Traceback" not in p.stderr


def test_dry_run_check_and_mounts_work_without_root(tmp_path):
    for args in (["run", "--dry-run", "--json", "--log-file", "", "--config", "/nonexistent"],
                 ["check", "--config", "/nonexistent"], ["mounts", "--json"]):
        p = run_unprivileged(args)
        assert p.returncode == 0 and "Traceback" not in p.stderr, (args, p.stderr)
