"""`vmsnap demo`: the newcomer's first command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

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


NOBODY = 65534


def _as_nobody(argv, **kw):
    return subprocess.run(["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY,
                           "--clear-groups", *argv], capture_output=True, text=True,
                          timeout=60, cwd="/", env={"PATH": "/usr/bin:/bin"}, **kw)


@pytest.fixture(scope="module")
def unprivileged_python(tmp_path_factory):
    """(interpreter, package dir) an unprivileged user can run: the package
    under test and the cffi backend copied to a world-readable directory,
    and this Python or a system one of the same version (this one may live
    under root's 0700 home).  Only set-up problems skip; whatever the CLI
    then does is asserted."""
    if os.geteuid() != 0:
        yield sys.executable, None
        return
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")
    import _cffi_backend

    import vmsnap_native
    base = tempfile.mkdtemp(prefix="vmsnap-unpriv-")
    try:
        os.chmod(base, 0o755)
        shutil.copytree(os.path.dirname(vmsnap_native.__file__),
                        os.path.join(base, "vmsnap_native"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(_cffi_backend.__file__, base)
        for root, dirs, files in os.walk(base):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
            for f in files:
                os.chmod(os.path.join(root, f), 0o644)
        version = "%d.%d" % sys.version_info[:2]
        for interp in (os.path.realpath(sys.executable), "/usr/bin/python" + version,
                       "/usr/local/bin/python" + version):
            probe = _as_nobody([interp, "-I", "-c", "import sys; sys.path.insert(0, %r); "
                                "import vmsnap_native._vmsnap_core" % base])
            if probe.returncode == 0:
                yield interp, base
                return
        pytest.skip("no Python %s that an unprivileged user can run with the core" % version)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_unprivileged(python, cli_args):
    """Runs the CLI with CLI_ARGS as an unprivileged user (nobody)."""
    interp, base = python
    if base is None:   # not root: we are the unprivileged user
        return subprocess.run([interp, "-m", "vmsnap_native", *cli_args],
                              capture_output=True, text=True, timeout=60)
    return _as_nobody([interp, "-I", "-c", "import sys; sys.path.insert(0, %r); "
                       "from vmsnap_native.cli import main; sys.exit(main(%r))"
                       % (base, list(cli_args))])


@pytest.mark.ci_required
@pytest.mark.parametrize("args", [
    ["demo"],
    ["run", "--mount", "/nonexistent"],
    ["freeze", "--timeout", "5", "--mount", "/nonexistent"],
], ids=["demo", "run", "freeze"])
def test_privileged_commands_without_root_say_so_without_a_traceback(unprivileged_python, args):
    p = run_unprivileged(unprivileged_python, args)
    assert p.returncode == 1 and "needs root" in p.stderr, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr


@pytest.mark.ci_required
def test_dry_run_check_and_mounts_work_without_root(unprivileged_python):
    for args in (["run", "--dry-run", "--json", "--log-file", "", "--config", "/nonexistent"],
                 ["check", "--config", "/nonexistent"], ["mounts", "--json"]):
        p = run_unprivileged(unprivileged_python, args)
        assert p.returncode == 0 and "Traceback" not in p.stderr, (args, p.stderr)
