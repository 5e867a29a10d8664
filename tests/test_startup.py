"""Start-up: each command imports only what it uses.  Agents start `vmsnap
hook` on every snapshot and monitoring runs `vmsnap mounts`; neither should
pay for the freeze, the scripts' machinery, the Azure report or the bench.
Checked by the modules a command leaves in sys.modules, not by a timing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .helpers import setup_scripts

# runs the CLI's main() as the installed `vmsnap` script does, then writes what it imported
DRIVER = """
import sys
from vmsnap_native.cli import main
try:
    main(sys.argv[2:])
except SystemExit:   # --version, usage
    pass
with open(sys.argv[1], "w") as f:
    f.write("\\n".join(sorted(sys.modules)))
"""

# never needed by a command that neither freezes nor runs a script
FREEZE_AND_SCRIPTS = {"vmsnap_native." + m for m in (
    "cycle", "freeze", "lock", "_resume", "step", "stop", "logbook", "metrics", "opsfile",
    "agents", "held", "_vmsnap_core")}
ELSEWHERE = {"vmsnap_native.azure", "vmsnap_native.devtools", "vmsnap_native.held"}


def imported(tmp_path, *args) -> set:
    out = tmp_path / "modules"
    env = dict(os.environ, VMSNAP_RUNTIME_DIR=str(tmp_path / "run"))   # never the real /run
    p = subprocess.run([sys.executable, "-c", DRIVER, str(out), *args], capture_output=True,
                       text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert out.exists(), p.stderr
    return set(out.read_text().split("\n"))


def test_version_imports_no_command(tmp_path):
    mods = imported(tmp_path, "--version")
    assert {m for m in mods if m.startswith("vmsnap_native")} == {
        "vmsnap_native", "vmsnap_native._version", "vmsnap_native.cli"}
    assert "dataclasses" not in mods and "json" not in mods


def test_mounts_without_a_configuration_imports_only_the_plan(tmp_path):
    mods = imported(tmp_path, "mounts", "--config", str(tmp_path / "none.json"))
    assert {"vmsnap_native.plan", "vmsnap_native.mountinfo", "vmsnap_native.disks"} <= mods
    heavy = FREEZE_AND_SCRIPTS | ELSEWHERE | {"vmsnap_native." + m for m in (
        "hooks", "scripts", "process", "result", "_core")}
    assert not mods & heavy


@pytest.mark.skipif(os.geteuid() != 0, reason="a configuration must be root's to be read")
def test_mounts_with_a_configuration_imports_no_freeze(tmp_path):
    cfg = setup_scripts(tmp_path)
    mods = imported(tmp_path, "mounts", "--config", cfg)
    assert "vmsnap_native.config" in mods and "vmsnap_native.policy" in mods
    # it shows no hooks: neither their discovery nor the scripts' machinery behind it
    assert not mods & (FREEZE_AND_SCRIPTS | ELSEWHERE | {"vmsnap_native." + m for m in (
        "hooks", "scripts", "process", "result")})


def test_hook_imports_neither_the_azure_report_nor_the_bench(tmp_path):
    # thaw with no session open: nothing to end, nothing started
    mods = imported(tmp_path, "hook", "qemu-ga", "--log-file", "", "thaw")
    assert "vmsnap_native.agents.calls" in mods
    assert not mods & ELSEWHERE


def test_check_imports_no_freeze(tmp_path):
    mods = imported(tmp_path, "check", "--config", str(tmp_path / "none.json"))
    printing = {"vmsnap_native.logbook", "vmsnap_native.opsfile"}   # its report: journal lines
    assert not mods & (FREEZE_AND_SCRIPTS - printing | ELSEWHERE)
