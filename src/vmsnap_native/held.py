"""`vmsnap freeze`: freeze the configured filesystems and leave them frozen,
held by their guardian until `vmsnap thaw` (``thaw_recorded``) or the
deadline, for a snapshot taken by something else.  All or nothing: if one
filesystem does not freeze, every one is thawed."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from .cycle import recover_stale
from .errors import BusyError, CoreUnavailable, FreezeError
from .freeze import FreezeSession
from .lock import RunLock
from .logbook import Logbook
from .mountinfo import Candidate
from .plan import make_plan


@dataclass
class HeldFreeze:
    """What a held freeze did (the JSON of `vmsnap freeze --json`)."""

    status: str = "failed"             # "frozen": left frozen under the guardian
    guardian_pid: int | None = None
    timeout: float = 0.0               # seconds after which the guardian thaws anyway
    record: str | None = None          # the record `vmsnap thaw` reads
    mounts: list[dict[str, Any]] = field(default_factory=list)   # MountResult.to_dict()s
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "guardian_pid": self.guardian_pid,
                "timeout": self.timeout, "record": self.record, "mounts": self.mounts,
                "errors": self.errors}


def output_on(cands: Iterable[Candidate],
              streams: Sequence[tuple[str, IO[str]]] | None = None) -> str | None:
    """A stream of ours that is a file on one of these filesystems: printing
    to it while they are frozen would block until the thaw."""
    devs = {}
    for c in cands:
        try:
            devs[os.stat(c.mount.mountpoint).st_dev] = c.mount.mountpoint
        except OSError:
            pass
    for name, stream in streams or (("stdout", sys.stdout), ("stderr", sys.stderr)):
        try:
            st = os.fstat(stream.fileno())
        except (OSError, ValueError):
            continue
        if stat.S_ISREG(st.st_mode) and st.st_dev in devs:
            return "%s is a file on %s, which would be frozen: redirect it elsewhere" % (
                name, devs[st.st_dev])
    return None


def freeze_and_hold(config: str | None, mounts: Sequence[str] | None,
                    timeout: float) -> HeldFreeze:
    """Freezes CONFIG's filesystems (or MOUNTS) under the run lock and leaves
    them frozen with the guardian, which thaws them after TIMEOUT seconds at
    the latest.  Never raises for what the report can say."""
    held = HeldFreeze(timeout=timeout)
    try:
        with RunLock():
            recover_stale(Logbook(None))
            plan = make_plan(config, mounts=mounts or None)
            if plan.selection.missing:
                raise FreezeError("not a mount point: %s" % ", ".join(plan.selection.missing))
            if not plan.selection.eligible:
                raise FreezeError("no filesystem to freeze")
            problem = output_on(plan.selection.eligible)
            if problem:
                raise FreezeError(problem)
            s = FreezeSession(plan.selection.eligible, timeout=timeout,
                              expedite_rcu=plan.settings.expedite_rcu,
                              dirty_cap_mb=plan.settings.dirty_cap_mib)
            s.freeze()
            held.mounts = [m.to_dict() for m in s.mounts]
            if not s.all_frozen:
                s.thaw()
                held.mounts = [m.to_dict() for m in s.mounts]
                held.errors = ["%s: %s" % (m.mountpoint, m.error) for m in s.failures]
            else:
                held.status, held.guardian_pid, held.record = "frozen", s.guardian_pid, \
                    s.record_path
                s.detach()
    except (BusyError, FreezeError, CoreUnavailable) as exc:
        held.errors.append(str(exc))
    except OSError as exc:
        held.errors.append("%s: %s" % (exc.filename, exc.strerror))
    return held
