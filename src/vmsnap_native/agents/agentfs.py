"""Every filesystem an agent that freezes by itself (qemu-ga, VMware Tools)
could have frozen.

Such an agent freezes between vmsnap's two phases, by its own list (every
freezable filesystem of the machine, whatever vmsnap's configuration
selects).  When its last call never comes, vmsnap thaws all of them, parents
first, through the core's one thaw from saved state (vmsnap_thaw_state):
through fds opened when the session began, each checked to be the directory
it was.  The same state is written as a freeze record under the runtime
directory, so that `vmsnap thaw`, the reaper's resume or the next run finish
the thaw if the session's process is SIGKILLed.
"""

from __future__ import annotations

import os

from .. import mountinfo
from .._core import CData, core
from ..freeze import _read_record, _thaw_one_record, ensure_runtime_dir, fd_mount_id, state_name


def _starttime(pid: int) -> int:
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


class AgentFilesystems:
    """The agent's freezable filesystems, open; ``thaw()`` undoes whatever
    the agent left frozen of them."""

    def __init__(self) -> None:
        self.mountpoints: list[str] = []
        self.left_out: list[str] = []      # could not be opened or are past the core's table
        self.record_path: str | None = None
        self._fds: list[int] = []
        self._buf: CData = None   # struct vmsnap_shared *: the state, as a record holds it
        self._sh: CData = None

    @classmethod
    def open(cls) -> "AgentFilesystems":
        self = cls()
        ffi, lib = core()
        cands = sorted(mountinfo.discover().eligible, key=lambda c: (c.level, c.mount.mountpoint))
        self._buf = ffi.new("struct vmsnap_shared *")
        sh = self._sh = self._buf
        sh.magic, sh.abi = lib.VMSNAP_RECORD_MAGIC, lib.VMSNAP_ABI_VERSION
        sh.controller_pid, sh.controller_starttime = os.getpid(), _starttime(os.getpid())
        sh.rcu_restore = -1
        sh.record_live = 1   # the states are final: nothing rewrites them in the window
        for c in cands:
            if len(self._fds) >= lib.VMSNAP_MAX_FS:
                self.left_out.append(c.mount.mountpoint)
                continue
            try:
                fd = os.open(c.mount.mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                self.left_out.append(c.mount.mountpoint)
                continue
            got = fd_mount_id(fd)
            if got is not None and got != c.mount.mount_id:   # mounted over since discovery
                os.close(fd)
                self.left_out.append(c.mount.mountpoint)
                continue
            st = os.fstat(fd)
            e = sh.fs[len(self._fds)]
            e.level, e.state = c.level, lib.VMSNAP_FS_FREEZING   # "may be frozen": thawed
            e.dev, e.ino = st.st_dev, st.st_ino
            raw = os.fsencode(c.mount.mountpoint)[:lib.VMSNAP_PATH_MAX - 1]
            ffi.memmove(e.path, raw, len(raw))
            self._fds.append(fd)
            self.mountpoints.append(c.mount.mountpoint)
        sh.n = len(self._fds)
        if sh.n:
            self._write_record()
        return self

    def _write_record(self) -> None:
        ffi, _ = core()
        path = os.path.join(ensure_runtime_dir(),
                            "freeze-agent-%s.rec" % os.urandom(8).hex())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o600)
        try:
            os.write(fd, bytes(ffi.buffer(self._sh)))
        finally:
            os.close(fd)
        self.record_path = path

    def thaw(self) -> list[str]:
        """Thaws, parents first, every one of them that is frozen; returns
        notes ("/data: thawed", "/x: thaw failed: ...")."""
        if not self._fds:
            return []
        ffi, lib = core()
        lib.vmsnap_thaw_state(self._sh, ffi.new("int32_t[]", self._fds))
        notes = []
        for i, mp in enumerate(self.mountpoints):
            st = state_name(self._sh.fs[i].state)
            if st == "thawed":
                notes.append("%s: thawed" % mp)
            elif st != "not-frozen":
                notes.append("%s: thaw failed: %s" % (mp, os.strerror(self._sh.fs[i].thaw_errno)))
            self._sh.fs[i].state = lib.VMSNAP_FS_NOT_FROZEN if st != "thaw-failed" else \
                lib.VMSNAP_FS_THAW_FAILED
        return notes

    def rearm(self) -> None:
        """Every one of them "may be frozen" again (as at ``open``), so that the
        next ``thaw()`` undoes a freeze that came after the last one."""
        _, lib = core()
        for i in range(len(self._fds)):
            if self._sh.fs[i].state != lib.VMSNAP_FS_THAW_FAILED:
                self._sh.fs[i].state = lib.VMSNAP_FS_FREEZING

    def close(self) -> None:
        """The session is over: the fds closed and the record removed."""
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []
        if self.record_path:
            try:
                os.unlink(self.record_path)
            except OSError:
                pass
            self.record_path = None


def thaw_agent_record(path: str) -> list[str]:
    """After the session's process died: thaws what the record at PATH says
    the agent could have frozen (parents first), and removes the record.
    Used by the reaper's resume before it runs the thaw hooks and the
    post-script.  Notes as "MOUNTPOINT: outcome"."""
    try:
        buf, sh = _read_record(path)
    except FileNotFoundError:
        return []
    return ["%s: %s" % (r.mountpoint, r.outcome)
            for r in _thaw_one_record(path, sh, buf, False, 5.0)]
