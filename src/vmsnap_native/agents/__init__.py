"""``vmsnap hook AGENT PHASE [ARG…]``: vmsnap as the freeze hook of agents
that already snapshot (qemu-ga, VMware Tools, the Google guest agent, AWS
DLM).

- table: the agents, one row each (phases, who freezes, exit statuses);
- calls: the agent's calls, thin clients of the session;
- holder: the session, a ``Cycle`` whose snapshot step is the agent's own;
- agentfs: what an agent that freezes by itself could have frozen, and its thaw.
"""

from __future__ import annotations

import os

from .._paths import DEFAULT_LOG_FILE
from .calls import HookCall, say
from .table import AGENTS, AgentSpec

TYPE_CHECKING = False   # true for type checkers; `typing` is not imported for it
if TYPE_CHECKING:
    import argparse

__all__ = ["AGENTS", "AgentSpec", "add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``vmsnap hook`` arguments (called by cli.build_parser)."""
    import argparse
    parser.add_argument("agent", metavar="AGENT", help="one of: %s" % ", ".join(AGENTS))
    parser.add_argument("--config", metavar="F", help="configuration file (default: "
                        "$VMSNAP_CONFIG or the Azure path)")
    parser.add_argument("--log-file", metavar="F",
                        help="log file (default %s; '' for none)" % DEFAULT_LOG_FILE)
    parser.add_argument("phase", metavar="PHASE", help="as the agent calls it")
    parser.add_argument("args", metavar="ARG", nargs=argparse.REMAINDER,
                        help="the agent's extra arguments (VMware scriptArg, GCE disk list)")


def main(args: argparse.Namespace) -> int:
    """``vmsnap hook AGENT [--config F] PHASE [ARG…]``; returns the exit status the agent expects."""
    spec = AGENTS.get(args.agent)
    if spec is None:
        say(["vmsnap hook: unknown agent %r; known: %s" % (args.agent, ", ".join(AGENTS))])
        return 2
    if os.geteuid() != 0:
        say(["vmsnap hook %s needs root: it runs root's scripts" % spec.name])
        return spec.exit_status("usage")
    misplaced = [a for a in args.args if a.split("=", 1)[0] in ("--config", "--log-file")]
    if misplaced:
        say(["vmsnap hook %s: %s must come before PHASE (vmsnap hook %s %s PHASE …)"
             % (spec.name, misplaced[0], spec.name, misplaced[0])])
        return spec.exit_status("usage")
    phase = spec.phase(args.phase)
    log_file = args.log_file if args.log_file is not None else DEFAULT_LOG_FILE
    call = HookCall(spec, phase, args.args, args.config, log_file)
    if phase == spec.phase(spec.first):
        return call.begin()
    if phase in spec.last:
        return call.end()
    if phase in spec.checks:
        return call.check()
    say(["vmsnap hook %s: unknown phase %r; %s calls its hook with: %s"
         % (spec.name, args.phase, spec.name,
            ", ".join((spec.first,) + spec.last + spec.checks))])
    return spec.exit_status("usage")
