"""`vmsnap hook AGENT PHASE` where no session is involved: the exit status
each agent is told for each outcome (the agents' own documented codes), the
phases each agent calls its hook with, and the usage errors.  Each call is
the real command line, as root (the hook refuses anyone else), with a
runtime directory of the test's own; nothing is frozen."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vmsnap_native.agents import AGENTS

from .conftest import IS_ROOT
from .helpers import setup_scripts

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root: the hook refuses anyone else")

# outcome -> exit status, as each agent documents what it makes of its hook's exit status
USUAL = {"ok": 0, "no-session": 0, "usage": 2, "pre-failed": 1, "pre-timeout": 1,
         "freeze-failed": 1, "post-failed": 1, "expired": 1, "busy": 1, "problems": 1}
EXPECTED = {
    "qemu-ga": USUAL,
    "vmware": USUAL,
    "gce": dict(USUAL, **{"pre-timeout": 124}),      # the guest agent's SCRIPT_TIMED_OUT
    "dlm": {"ok": 0, "no-session": 205, "usage": 1, "pre-failed": 201, "pre-timeout": 201,
            "freeze-failed": 201, "post-failed": 202, "expired": 203, "busy": 204,
            "problems": 206},                       # AWS DLM's documented codes
}


def test_each_agent_is_told_the_exit_status_it_documents_for_each_outcome():
    assert sorted(AGENTS) == sorted(EXPECTED)
    for name, want in EXPECTED.items():
        got = {outcome: AGENTS[name].exit_status(outcome) for outcome in want}
        assert got == want, name


def hook(tmp_path, *argv):
    return subprocess.run([sys.executable, "-m", "vmsnap_native", "hook", *argv],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, VMSNAP_RUNTIME_DIR=str(tmp_path / "run")))


@pytest.mark.parametrize("agent,phases,status", [
    ("qemu-ga", "freeze, thaw", 2),
    ("vmware", "freeze, thaw, freezefail", 2),
    ("gce", "pre, post", 2),
    ("dlm", "pre-script, post-script, dry-run", 1),
])
def test_an_unknown_phase_names_the_phases_the_agent_calls(tmp_path, agent, phases, status):
    p = hook(tmp_path, agent, "--log-file", "", "snapshot")
    assert p.returncode == status
    assert p.stderr == ("vmsnap hook %s: unknown phase 'snapshot'; %s calls its hook with: %s\n"
                        % (agent, agent, phases))


def test_only_vmware_phases_match_in_any_case(tmp_path):
    """open-vm-tools passes freeze/thaw/freezeFail in whatever case; qemu-ga exactly."""
    p = hook(tmp_path, "qemu-ga", "--log-file", "", "THAW")
    assert p.returncode == 2 and "unknown phase 'THAW'" in p.stderr
    for phase in ("THAW", "FreezeFail"):
        p = hook(tmp_path, "vmware", "--log-file", "", phase)
        assert p.returncode == 0, p.stderr             # a last call without a session
        assert "vmsnap hook vmware %s: no open session" % phase.lower() in p.stderr


@pytest.mark.parametrize("agent,phase,status", [
    ("qemu-ga", "thaw", 0), ("vmware", "freezefail", 0), ("gce", "post", 0),
    ("dlm", "post-script", 205)])
def test_a_last_call_without_a_session_is_the_agents_no_session_status(tmp_path, agent, phase,
                                                                        status):
    p = hook(tmp_path, agent, "--log-file", "", phase)
    assert p.returncode == status
    assert "vmsnap hook %s %s: no open session, nothing to do" % (agent, phase) in p.stderr


def test_dlm_dry_run_of_a_good_configuration_is_ready(tmp_path):
    config = setup_scripts(tmp_path, mountsToFreeze=[])
    p = hook(tmp_path, "dlm", "--config", config, "--log-file", "", "dry-run")
    assert p.returncode == 0, p.stderr
    assert "vmsnap hook dlm dry-run: ready" in p.stderr


@pytest.mark.parametrize("agent,option,status", [("dlm", "--log-file=x", 1),
                                                 ("vmware", "--config", 2)])
def test_an_option_after_the_phase_says_where_it_goes(tmp_path, agent, option, status):
    p = hook(tmp_path, agent, "post-script" if agent == "dlm" else "thaw", option, "y")
    assert p.returncode == status
    assert p.stderr == ("vmsnap hook %s: %s must come before PHASE (vmsnap hook %s %s PHASE …)\n"
                        % (agent, option, agent, option))


def test_an_unknown_agent_names_the_known_ones(tmp_path):
    p = hook(tmp_path, "hyperv", "freeze")
    assert p.returncode == 2
    assert p.stderr == "vmsnap hook: unknown agent 'hyperv'; known: qemu-ga, vmware, gce, dlm\n"


def test_a_late_last_call_goes_to_the_log_file_given(tmp_path):
    """A last call after the session ended is logged where --log-file says."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    with open(run / "hook-dlm.expired.json", "w") as f:
        json.dump({"begun_at": "2026-01-01T00:00:00Z", "reason": "the deadline passed"}, f)
    os.chmod(run / "hook-dlm.expired.json", 0o600)
    log = tmp_path / "vmsnap.log"
    p = hook(tmp_path, "dlm", "--log-file", str(log), "post-script")
    assert p.returncode == 203, p.stderr
    assert "the deadline passed" in p.stderr and "the deadline passed" in log.read_text()


def test_the_hooks_help_names_the_agents_the_phases_and_the_defaults(tmp_path):
    """What `vmsnap hook --help` tells the one who writes an agent's hook
    configuration: the agents known, where the arguments go, the defaults."""
    p = hook(tmp_path, "--help")
    assert p.returncode == 0
    text = " ".join(p.stdout.split())    # argparse wraps to the terminal's width
    assert text == (
        "usage: vmsnap hook [-h] [-q | -v] [--config F] [--log-file F] AGENT PHASE ... "
        "positional arguments: "
        "AGENT one of: qemu-ga, vmware, gce, dlm "
        "PHASE as the agent calls it "
        "ARG the agent's extra arguments (VMware scriptArg, GCE disk list) "
        "options: -h, --help show this help message and exit "
        "-q, --quiet print only errors on stderr "
        "-v, --verbose also print the log's records on stderr "
        "--config F configuration file (default: $VMSNAP_CONFIG or the Azure path) "
        "--log-file F log file (default /var/log/vmsnap.log; '' for none)")
