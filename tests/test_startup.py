"""Start-up: each command imports only what it uses.  Agents start `vmsnap
hook` on every snapshot and monitoring runs `vmsnap mounts`; neither should
pay for the freeze, the scripts' machinery, the Azure report or the bench,
and the last call of a hook (thaw, post) only reaches the session holder:
it imports neither the cycle nor the configuration.  The thin commands also
leave out `dataclasses` (with `inspect`, `ast`, `tokenize`) and `typing`,
which were most of their import time.  Checked by the modules a command
leaves in sys.modules, not by a timing."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from .conftest import root_only
from .helpers import setup_scripts, write_config

# runs the CLI's main() as the installed `vmsnap` script does, then writes what it
# imported (and, next to it, the exit status main() returned)
DRIVER = """
import sys
from vmsnap_native.cli import main
status = None
try:
    status = main(sys.argv[2:])
except SystemExit:   # --version, usage
    pass
with open(sys.argv[1] + ".status", "w") as f:
    f.write(str(status))
with open(sys.argv[1], "w") as f:
    f.write("\\n".join(sorted(sys.modules)))
"""

# never needed by a command that neither freezes nor runs a script
FREEZE_AND_SCRIPTS = {"vmsnap_native." + m for m in (
    "cycle", "freeze", "lock", "_resume", "step", "stop", "logbook", "metrics", "opsfile",
    "agents", "held", "_vmsnap_core")}
ELSEWHERE = {"vmsnap_native.azure", "vmsnap_native.devtools", "vmsnap_native.held"}
# what the thin commands leave out of the standard library: dataclasses pulls inspect,
# ast, tokenize and dis; typing is for type checkers only; logging is the run's log
SLOW_STDLIB = {"dataclasses", "inspect", "ast", "tokenize", "typing", "logging"}
# what a hook's last call does not need: it reaches the session holder through the
# session's file and socket (agents.session), and asks the core whether the holder lives
CYCLE = FREEZE_AND_SCRIPTS - {"vmsnap_native.agents", "vmsnap_native._vmsnap_core"} | {
    "vmsnap_native." + m for m in ("agents.holder", "agents.agentfs", "config", "policy",
                                   "plan", "decide", "result", "process", "scripts", "hooks",
                                   "errors", "mountinfo", "disks")}


def imported(tmp_path, *args, env=None) -> set:
    out = tmp_path / "modules"
    env = env or dict(os.environ, VMSNAP_RUNTIME_DIR=str(tmp_path / "run"))   # never the real /run
    p = subprocess.run([sys.executable, "-c", DRIVER, str(out), *args], capture_output=True,
                       text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert out.exists(), p.stderr
    return set(out.read_text().split("\n"))


def test_version_imports_no_command(tmp_path):
    mods = imported(tmp_path, "--version")
    assert {m for m in mods if m.startswith("vmsnap_native")} == {
        "vmsnap_native", "vmsnap_native._version", "vmsnap_native.cli"}
    assert not mods & (SLOW_STDLIB | {"json"})


def test_mounts_without_a_configuration_imports_only_the_plan(tmp_path):
    mods = imported(tmp_path, "mounts", "--config", str(tmp_path / "none.json"))
    assert {"vmsnap_native.plan", "vmsnap_native.mountinfo", "vmsnap_native.disks"} <= mods
    heavy = FREEZE_AND_SCRIPTS | ELSEWHERE | {"vmsnap_native." + m for m in (
        "hooks", "scripts", "process", "result", "_core", "decide")}
    assert not mods & heavy
    assert not mods & SLOW_STDLIB


@pytest.mark.skipif(os.geteuid() != 0, reason="a configuration must be root's to be read")
def test_mounts_with_a_configuration_imports_no_freeze(tmp_path):
    cfg = setup_scripts(tmp_path)
    mods = imported(tmp_path, "mounts", "--config", cfg)
    assert "vmsnap_native.config" in mods and "vmsnap_native.policy" in mods
    # it shows no hooks: neither their discovery nor the scripts' machinery behind it
    assert not mods & (FREEZE_AND_SCRIPTS | ELSEWHERE | {"vmsnap_native." + m for m in (
        "hooks", "scripts", "process", "result", "decide")})
    assert not mods & SLOW_STDLIB


def test_hook_imports_neither_the_azure_report_nor_the_bench(tmp_path):
    # thaw with no session open: nothing to end, nothing started
    mods = imported(tmp_path, "hook", "qemu-ga", "--log-file", "", "thaw")
    assert "vmsnap_native.agents.calls" in mods
    assert not mods & ELSEWHERE


def test_a_last_call_with_no_session_imports_no_cycle(tmp_path):
    mods = imported(tmp_path, "hook", "qemu-ga", "--log-file", "", "thaw")
    assert {"vmsnap_native.agents.calls", "vmsnap_native.agents.session"} <= mods
    assert not mods & CYCLE
    assert not mods & SLOW_STDLIB


@root_only
def test_a_last_call_reaches_the_holder_without_the_cycle(tmp_path):
    """A session open (gce: vmsnap freezes for it, here nothing: mountsToFreeze
    is empty), its last call made through the CLI's main(): it gets the
    holder's verdict, and imports only the session's file and socket and the
    core (whether the holder lives), not the cycle, the freeze or the
    configuration that the holder, a process of its own, runs."""
    cfg = setup_scripts(tmp_path, mountsToFreeze=[], freezeTimeoutInSeconds=30)
    env = dict(os.environ, VMSNAP_RUNTIME_DIR=str(tmp_path / "run"),
               VMSNAP_CONFIG=write_config(tmp_path / "safe.json", mountsToFreeze=[]))
    first = subprocess.run([sys.executable, "-m", "vmsnap_native", "hook", "gce", "--config", cfg,
                            "--log-file", "", "pre"], capture_output=True, text=True, timeout=60,
                           env=env, stdin=subprocess.DEVNULL)
    assert first.returncode == 0, first.stderr
    session = tmp_path / "run" / "hook-gce.json"
    assert session.exists()
    mods = imported(tmp_path, "hook", "gce", "--config", cfg, "--log-file", "", "post", env=env)
    assert (tmp_path / "modules.status").read_text() == "0"   # the holder's verdict: ok
    end = time.monotonic() + 30
    while session.exists() and time.monotonic() < end:   # the holder ended with its verdict
        time.sleep(0.05)
    assert not session.exists()
    assert {"vmsnap_native.agents.session", "vmsnap_native._core",
            "vmsnap_native._vmsnap_core"} <= mods
    assert not mods & (CYCLE - {"vmsnap_native.errors"})   # the core raises its own errors
    assert not mods & SLOW_STDLIB


def test_a_dry_run_imports_neither_dataclasses_nor_typing(tmp_path):
    """A run imports the cycle, but its value classes and its JSON result
    (to_dict) need neither dataclasses nor typing.  A dry run freezes nothing."""
    mods = imported(tmp_path, "run", "--dry-run", "--json", "--config",
                    str(tmp_path / "none.json"), "--log-file", "")
    assert (tmp_path / "modules.status").read_text() == "0"
    assert {"vmsnap_native.cycle", "vmsnap_native.result"} <= mods
    # the run's log is logging's too (and logging imports tokenize, for tracebacks)
    assert not mods & (SLOW_STDLIB - {"logging", "tokenize"})


def test_check_imports_no_freeze(tmp_path):
    mods = imported(tmp_path, "check", "--config", str(tmp_path / "none.json"))
    printing = {"vmsnap_native.logbook", "vmsnap_native.opsfile"}   # its report: journal lines
    assert not mods & (FREEZE_AND_SCRIPTS - printing | ELSEWHERE)
