"""The agents vmsnap is a freeze hook for: one row each.  How the agent
calls its hook (its first and last phases), who freezes (the agent itself,
or vmsnap for it), and what the agent makes of each exit status.  Adding an
agent adds a row, no logic."""

from __future__ import annotations

from .._record import Frozen


class AgentSpec(Frozen):
    """How one agent calls its hook, and what its exit statuses mean to it."""

    __slots__ = ("name", "first", "last", "failed_last", "agent_freezes", "fold_case", "checks",
                 "refuse_second", "codes")
    name: str
    first: str                       # the phase that begins a snapshot
    last: tuple[str, ...]            # phases that end it
    failed_last: tuple[str, ...]     # last phases that say the snapshot was not taken
    agent_freezes: bool              # False: vmsnap freezes on the first phase
    fold_case: bool                  # phases match case-insensitively (VMware)
    checks: tuple[str, ...]          # phases that only validate (DLM dry-run)
    refuse_second: bool              # a first phase while a session is open: refused (busy)
    codes: dict[str, int]            # outcome -> exit status

    def __init__(self, name: str, first: str, last: tuple[str, ...],
                 failed_last: tuple[str, ...] = (), agent_freezes: bool = True,
                 fold_case: bool = False, checks: tuple[str, ...] = (),
                 refuse_second: bool = False, codes: dict[str, int] | None = None) -> None:
        f = object.__setattr__
        f(self, "name", name)
        f(self, "first", first)
        f(self, "last", last)
        f(self, "failed_last", failed_last)
        f(self, "agent_freezes", agent_freezes)
        f(self, "fold_case", fold_case)
        f(self, "checks", checks)
        f(self, "refuse_second", refuse_second)
        f(self, "codes", {} if codes is None else codes)

    def exit_status(self, outcome: str) -> int:
        default = {"ok": 0, "no-session": 0, "usage": 2}.get(outcome, 1)
        return self.codes.get(outcome, default)

    def phase(self, text: str) -> str:
        return text.lower() if self.fold_case else text


AGENTS = {
    # qga/commands-posix.c: the hook is exec'd with "freeze" before the agent
    # freezes (non-zero aborts the freeze, and no thaw follows) and "thaw"
    # after it thawed; stdio on /dev/null.
    "qemu-ga": AgentSpec("qemu-ga", "freeze", ("thaw",)),
    # open-vm-tools scriptOps.c: backupScripts.d/* run through a shell as
    # "path" freeze|freezeFail|thaw ["scriptArg"]; a failing freeze aborts the
    # quiesce and that script gets no freezeFail; freezeFail: quiesce failed.
    "vmware": AgentSpec("vmware", "freeze", ("thaw", "freezefail"), failed_last=("freezefail",),
                        fold_case=True),
    # google-guest-agent: /etc/google/snapshots/pre.sh and post.sh with one
    # argument, the disk list; exit 124 is reported as SCRIPT_TIMED_OUT.  The
    # agent freezes nothing itself.
    "gce": AgentSpec("gce", "pre", ("post",), agent_freezes=False,
                     codes={"pre-timeout": 124}),
    # AWS DLM: an SSM command document called with command=pre-script, then
    # post-script (dry-run validates); AWS's documented exit codes.
    "dlm": AgentSpec("dlm", "pre-script", ("post-script",), agent_freezes=False,
                     checks=("dry-run",), refuse_second=True,
                     codes={"pre-failed": 201, "pre-timeout": 201, "freeze-failed": 201,
                            "post-failed": 202, "expired": 203, "busy": 204,
                            "no-session": 205, "usage": 1, "problems": 206}),
}
