"""Freeze sessions: parallel FIFREEZE/FITHAW under a guardian process.

``freeze_filesystems(mountpoints, timeout)`` opens every mount point, starts
the guardian (csrc/session.c, csrc/guardian.c), and freezes in parallel
waves, children first.  The guardian thaws at the deadline (TIMEOUT after
the first FIFREEZE), when this process dies, or when told to; a record
under /run/vmsnap/ lets ``thaw_recorded()`` finish the job after a crash of
both, with the core's one thaw from saved state (parents first).  States,
thaw reasons, the record's magic and sizes come from csrc/vmsnap.h.
"""

from __future__ import annotations

import errno as errno_mod
import functools
import glob
import os
import re
import signal
import stat
import time
from collections.abc import Callable, Iterable, Mapping

from . import mountinfo, process
from ._core import CData, core
from ._paths import DEFAULT_RUNTIME_DIR as DEFAULT_RUNTIME_DIR  # re-exported
from ._paths import RUNTIME_DIR_ENV as RUNTIME_DIR_ENV
from ._paths import runtime_dir as runtime_dir
from ._record import Record
from .config import DEFAULT_DIRTY_CAP_MIB, MIN_DIRTY_CAP_MIB
from .errors import BusyError, FreezeError

TYPE_CHECKING = False   # true for type checkers; `typing` is not imported for it
if TYPE_CHECKING:
    from typing import Any, Literal

# The controller waits this long past the freeze deadline for the guardian's answer.
_REPLY_MARGIN_S = 10.0

# The freeze cap and the presync bound: seconds.  30 days is more than any
# snapshot needs and keeps CLOCK_MONOTONIC nanoseconds far from overflowing.
MAX_TIMEOUT_S = 30 * 24 * 3600
DEFAULT_PRESYNC_BOUND_S = 30.0
# How each level's freezes start (enum vmsnap_schedule): "jit" starts those
# the presync found quick only once the slow ones are frozen (bench/busy.py).
SCHEDULES = ("jit", "parallel")
DEFAULT_SCHEDULE = "jit"
# During the presync each device's dirty data is capped at this (MiB; 0: no
# cap), so that a streaming writer leaves the freeze little to flush
# (csrc/dirtycap.c).  Not a few MiB: the kernel rounds it to a ratio, and 0
# makes every writer of the device sleep in 200 ms steps.
DEFAULT_DIRTY_CAP_MB = DEFAULT_DIRTY_CAP_MIB
MIN_DIRTY_CAP_MB = MIN_DIRTY_CAP_MIB
# What the states of enum vmsnap_fs_state say, defined once here:
# the session froze it (it thaws it):
FROZE = frozenset({"frozen", "thawing", "thawed", "thaw-failed", "not-frozen"})
# a thaw from saved state undoes it: this run may have frozen it (the C
# core's may_be_ours(); a FIFREEZE in flight lands even if its caller dies;
# in a record, "freezing" is also each filesystem of a freeze wave marked
# before the wave's first FIFREEZE, whose result was not recorded yet):
MAYBE_OURS = frozenset({"freezing", "frozen", "thawing", "thaw-failed"})
# the thaw has begun or is done (a frozen window is over):
THAW_BEGUN = frozenset({"thawing", "thawed", "not-frozen", "thaw-failed"})
# after the thaw, it may still be frozen by us: the record is kept:
LEFT_OVER = frozenset({"freezing", "frozen", "thaw-failed"})


@functools.lru_cache(maxsize=None)
def state_names() -> dict[int, str]:
    """enum vmsnap_fs_state (csrc/vmsnap.h) as names: VMSNAP_FS_THAW_FAILED -> 'thaw-failed'."""
    _, lib = core()
    prefix = "VMSNAP_FS_"
    return {getattr(lib, n): n[len(prefix):].lower().replace("_", "-")
            for n in dir(lib) if n.startswith(prefix)}


def state_name(code: int) -> str:
    return state_names().get(code, str(code))


@functools.lru_cache(maxsize=None)
def _thaw_reasons() -> dict[int, tuple[str | None, str | None]]:
    """enum vmsnap_thaw_reason -> (short name, the cause as a user reads it)."""
    _, lib = core()
    return {
        lib.VMSNAP_THAW_NONE: (None, None),
        lib.VMSNAP_THAW_REQUESTED: ("requested", "thaw requested by this run"),
        lib.VMSNAP_THAW_DEADLINE: ("deadline", "deadline"),
        lib.VMSNAP_THAW_CONTROLLER_DIED: ("controller-died", "controller died"),
        lib.VMSNAP_THAW_SIGNAL: ("signal", "signal to the guardian"),
        lib.VMSNAP_THAW_EMERGENCY: ("emergency", "guardian died"),
        lib.VMSNAP_THAW_COMMAND: ("vmsnap-thaw", "vmsnap thaw --force from another shell"),
    }


def thaw_reason_name(code: int) -> str | None:
    return _thaw_reasons().get(code, (str(code), str(code)))[0]


def thaw_cause(code: int) -> str | None:
    return _thaw_reasons().get(code, (str(code), str(code)))[1]


def errno_name(err: int) -> str:
    if err == errno_mod.EOPNOTSUPP:  # Python names 95 ENOTSUP; the kernel docs say EOPNOTSUPP
        return "EOPNOTSUPP"
    return errno_mod.errorcode.get(err, str(err))


def ensure_runtime_dir() -> str:
    """Makes the runtime directory root's alone (0700), as records and the
    lock need: a directory someone else owns (or a symlink) is refused with
    OSError, a root-owned one with a looser mode is tightened."""
    rdir = runtime_dir()
    os.makedirs(rdir, mode=0o700, exist_ok=True)
    st = os.lstat(rdir)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise OSError(errno_mod.EPERM, "not a directory of ours (owner uid %d): refusing to keep "
                      "freeze records there" % st.st_uid, rdir)
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(rdir, 0o700)
    return rdir


def _ms(start: int, end: int) -> float | None:
    if not start or not end or end < start:
        return None
    return round((end - start) / 1e6, 3)


class MountResult(Record):
    """What happened to one filesystem in a freeze session."""

    __slots__ = ("mountpoint", "fstype", "device", "level", "state", "errno", "error", "sync_ms",
                 "sync_errno", "freeze_ms", "thaw_ms", "blocked_ms", "late")
    mountpoint: str
    fstype: str
    device: str
    level: int
    state: str
    errno: int
    error: str | None
    sync_ms: float | None
    sync_errno: int               # ENOSYS: no syncfs here, the presync was skipped
    freeze_ms: float | None
    thaw_ms: float | None
    # what its writers felt: its FIFREEZE issued -> its FITHAW returned
    blocked_ms: float | None
    late: bool                    # just in time: its freeze started after the slow ones

    def __init__(self, mountpoint: str, fstype: str, device: str, level: int,
                 state: str = "pending", errno: int = 0, error: str | None = None,
                 sync_ms: float | None = None, sync_errno: int = 0,
                 freeze_ms: float | None = None, thaw_ms: float | None = None,
                 blocked_ms: float | None = None, late: bool = False) -> None:
        self.mountpoint = mountpoint
        self.fstype = fstype
        self.device = device
        self.level = level
        self.state = state
        self.errno = errno
        self.error = error
        self.sync_ms = sync_ms
        self.sync_errno = sync_errno
        self.freeze_ms = freeze_ms
        self.thaw_ms = thaw_ms
        self.blocked_ms = blocked_ms
        self.late = late

    @property
    def frozen(self) -> bool:
        """This session froze it (and so thaws it)."""
        return self.state in FROZE and (self.state != "not-frozen" or self.freeze_ms is not None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mountpoint": self.mountpoint, "fstype": self.fstype, "device": self.device,
            "frozen": self.frozen, "state": self.state, "freeze_ms": self.freeze_ms,
            "thaw_ms": self.thaw_ms, "sync_ms": self.sync_ms, "blocked_ms": self.blocked_ms,
            "late": self.late,
            "error": self.error,
        }


def fd_mount_id(fd: int) -> int | None:
    """The id of the mount an open fd is on (/proc/self/fdinfo), or None."""
    try:
        with open("/proc/self/fdinfo/%d" % fd) as f:
            for line in f:
                if line.startswith("mnt_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _targets(mountpoints: Iterable[str | mountinfo.Candidate]) -> list[mountinfo.Candidate]:
    """Candidates for the given mount points (strings or Candidates), levels assigned."""
    cands = [m for m in mountpoints if isinstance(m, mountinfo.Candidate)]
    paths = [m for m in mountpoints if not isinstance(m, mountinfo.Candidate)]
    if paths:
        mounts = mountinfo.visible(mountinfo.read_mountinfo())
        seen = {c.mount.device for c in cands}
        for p in paths:
            p = os.path.abspath(os.fspath(p))
            if not os.path.isdir(p):
                err = errno_mod.ENOTDIR if os.path.exists(p) else errno_mod.ENOENT
                raise OSError(err, "cannot open mount point: %s" % os.strerror(err), p)
            m = mountinfo.holder(mounts, p)   # a directory inside one: the mount holding it
            if m is None:
                raise FreezeError("%s: no mounted filesystem holds this path" % p)
            if m.device in seen:
                continue  # one superblock is frozen once
            seen.add(m.device)
            if m.mountpoint != p:
                m = m.replaced(mountpoint=p)
            cands.append(mountinfo.Candidate(m, True))
        mountinfo.assign_levels(cands)   # candidates from select() come with theirs
    cands.sort(key=lambda c: (c.level, c.mount.mountpoint))
    return cands


# Stacking filesystems write through to others, which we cannot see from
# their superblock: a record there is never rewritten in the window.
_STACKING = ("overlay", "aufs", "fuse", "9p", "virtiofs", "nfs", "cifs")


def _superblock_of(fd: int, mounts: dict[int | None, mountinfo.Mount]) -> tuple[str, str] | None:
    """(major:minor of the superblock, fstype) of the mount FD is on, or None."""
    m = mounts.get(fd_mount_id(fd))
    return (m.device, m.fstype) if m is not None else None


def record_may_stay_live(record_fd: int, target_fds: Iterable[int]) -> bool:
    """Whether the guardian may rewrite the record during the window: only
    where writing cannot block on a filesystem we freeze.  Superblocks are
    compared (mountinfo's major:minor of each fd's mount), not st_dev: a
    btrfs subvolume's st_dev is not its superblock's."""
    target_fds = list(target_fds)
    ids = {fd_mount_id(fd) for fd in [record_fd, *target_fds]}
    mounts: dict[int | None, mountinfo.Mount] = {
        m.mount_id: m for m in mountinfo.read_mountinfo(ids={i for i in ids if i is not None})}
    rec = _superblock_of(record_fd, mounts)
    if rec is None or rec[1].split(".")[0] in _STACKING:
        return False
    frozen: set[str | int] = set()   # superblocks (major:minor) and st_dev numbers
    for fd in target_fds:
        sb = _superblock_of(fd, mounts)
        if sb is None:
            return False
        frozen.add(sb[0])
        frozen.add(os.fstat(fd).st_dev)
    return rec[0] not in frozen and os.fstat(record_fd).st_dev not in frozen


class FreezeSession:
    """Frozen filesystems, held by a guardian until ``thaw()`` (or the deadline).

    Use as a context manager::

        with freeze_filesystems(["/data"], timeout=10) as s:
            take_snapshot()          # writes to /data block meanwhile
            assert s.thawed_early() is None   # every filesystem stayed frozen
        print(s.window_ms, s.mounts)

    After the freeze, ``mounts`` holds a MountResult per filesystem and
    ``all_frozen`` tells whether every one of them froze.  A filesystem that
    fails to freeze (EOPNOTSUPP, EBUSY: frozen by someone else) is reported,
    not raised; the caller decides.  Nothing that someone else froze is ever
    thawed by the session.

    The cap TIMEOUT counts from the first FIFREEZE; the presync before it
    has its own bound, PRESYNC_TIMEOUT (default min(timeout, 30 s)), past
    which the freeze goes on (``presync_timed_out``).  After ``freeze()``,
    ``deadline_ns`` is the guardian's real deadline (CLOCK_MONOTONIC).
    """

    def __init__(self, mountpoints: Iterable[str | mountinfo.Candidate], timeout: float, presync: bool = True,
                 sequential: bool = False, expedite_rcu: bool = True,
                 presync_timeout: float | None = None, schedule: str = DEFAULT_SCHEDULE,
                 dirty_cap_mb: int = DEFAULT_DIRTY_CAP_MB,
                 dirty_saved: Mapping[int, tuple[int, int]] | None = None) -> None:
        self.timeout = _seconds("timeout", timeout)
        if schedule not in SCHEDULES:
            raise ValueError("schedule must be one of %s, not %r" % (", ".join(SCHEDULES), schedule))
        self.schedule = schedule
        if dirty_cap_mb and not MIN_DIRTY_CAP_MB <= int(dirty_cap_mb) <= 1 << 20:
            raise ValueError("dirty_cap_mb must be 0 (no cap) or %d..%d MiB, not %r"
                             % (MIN_DIRTY_CAP_MB, 1 << 20, dirty_cap_mb))
        self.dirty_cap_mb = int(dirty_cap_mb or 0)
        # st_dev -> the devices' values saved before the session (gentle.py)
        self.dirty_saved = dict(dirty_saved or {})
        if presync_timeout is None:
            presync_timeout = min(self.timeout, DEFAULT_PRESYNC_BOUND_S)
        self.presync_timeout = _seconds("presync_timeout", presync_timeout)
        self.presync = presync
        self.expedite_rcu = expedite_rcu
        self.rcu_expedited: bool = False   # whether the guardian did expedite for this freeze
        self.targets = _targets(list(mountpoints))
        if sequential:
            # one filesystem per wave, in the same order: how the peers freeze
            self.targets = [c.replaced(level=i) for i, c in enumerate(self.targets)]
        if not self.targets:
            raise FreezeError("no filesystem to freeze")
        max_fs = core()[1].VMSNAP_MAX_FS
        if len(self.targets) > max_fs:
            raise FreezeError("at most %d filesystems per session (got %d)"
                              % (max_fs, len(self.targets)))
        self.mounts: list[MountResult] = [MountResult(c.mount.mountpoint, c.mount.fstype, c.mount.device, c.level)
                       for c in self.targets]
        self.deadline_ns: int = 0
        self.deadline_hit: bool = False
        self.thaw_reason: str | None = None
        self.presync_ms: float | None = None
        self.presync_timed_out: bool = False
        self.guardian_pid: int | None = None
        self.guardian_starttime: int | None = None   # with the pid, names the guardian
        self.record_path: str | None = None
        self.record_live: bool = False
        self.window_ms: float | None = None
        self.first_freeze_ns: int | None = None   # CLOCK_MONOTONIC of the first FIFREEZE issued
        self.detached: bool = False
        self._fds: list[int] = []
        self._session: CData = None   # struct vmsnap_session *
        self._shared: CData = None    # struct vmsnap_shared *: what the guardian writes
        self._thawed = False
        self._thaw_code = 0

    # -- set-up -----------------------------------------------------------
    def _open_all(self) -> None:
        """Opens every mount point before anything is frozen, and checks that
        each fd is on the mount that was selected: a mount point unmounted
        since discovery opens the directory underneath, on another filesystem
        (perhaps /), which must never be frozen in its place."""
        for c in self.targets:
            try:
                fd = os.open(c.mount.mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                self._close_fds()
                raise OSError(exc.errno, "cannot open mount point: %s" % exc.strerror,
                              c.mount.mountpoint) from None
            self._fds.append(fd)
            got = fd_mount_id(fd)
            if got is not None and got != c.mount.mount_id:
                self._close_fds()
                raise OSError(errno_mod.ESTALE, "the mount changed since it was selected "
                              "(unmounted or mounted over): not frozen", c.mount.mountpoint)

    def _close_fds(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []

    def _open_record(self) -> tuple[int, str | None, bool]:
        """The crash record, in a root-only runtime directory; live (rewritten
        by the guardian in the window) only where that cannot block."""
        try:
            rdir = ensure_runtime_dir()
            # who creates it (pid + start time: a record found empty after a
            # crash is removed once that process is gone) and an unpredictable
            # part (a name left over from a crash is never ours again)
            me = os.getpid()
            path = os.path.join(rdir, "freeze-%d-%d-%s.rec" % (
                me, process.starttime(me) or 0, os.urandom(8).hex()))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                         0o600)
        except OSError:
            return -1, None, False
        return fd, path, record_may_stay_live(fd, self._fds)

    def start(self) -> FreezeSession:
        """Opens everything and starts the guardian; nothing is frozen yet."""
        ffi, lib = core()
        self._open_all()
        init = ffi.new("struct vmsnap_shared *")
        init.n = len(self.targets)
        init.timeout_ns = int(self.timeout * 1e9)
        init.presync_timeout_ns = int(self.presync_timeout * 1e9)
        # the guardian's bound until the freeze command (then its own)
        self.deadline_ns = time.monotonic_ns() + init.presync_timeout_ns + init.timeout_ns
        init.deadline_ns = self.deadline_ns
        for i, (c, fd) in enumerate(zip(self.targets, self._fds)):
            st = os.fstat(fd)
            e = init.fs[i]
            e.level = c.level
            e.dev = st.st_dev
            e.ino = st.st_ino
            e.bdi_saved, e.bdi_max_ratio_fine = self.dirty_saved.get(st.st_dev, (0, 0))
            raw = os.fsencode(c.mount.mountpoint)[:lib.VMSNAP_PATH_MAX - 1]
            ffi.memmove(e.path, raw, len(raw))
        record_fd, self.record_path, self.record_live = self._open_record()
        init.record_live = 1 if self.record_live else 0
        init.expedite_rcu = 1 if self.expedite_rcu else 0
        init.schedule = lib.VMSNAP_SCHEDULE_JIT if self.schedule == "jit" else \
            lib.VMSNAP_SCHEDULE_PARALLEL
        init.dirty_cap_mb = self.dirty_cap_mb
        ret = ffi.new("struct vmsnap_session **")
        try:
            r = lib.vmsnap_session_start(init, ffi.new("int32_t[]", self._fds), record_fd,
                                         os.fsencode(self.record_path or ""), ret)
        finally:
            if record_fd >= 0:
                os.close(record_fd)
            self._close_fds()   # the session and the guardian hold their own
        if r < 0:
            self._remove_record()
            raise FreezeError("cannot start the guardian: %s" % os.strerror(-r))
        self._session = ret[0]
        self._shared = lib.vmsnap_session_shared(self._session)
        self.guardian_pid = lib.vmsnap_session_guardian_pid(self._session)
        self.guardian_starttime = int(self._shared.guardian_starttime)
        return self

    def _remove_record(self) -> None:
        if self.record_path:
            try:
                os.unlink(self.record_path)
            except OSError:
                pass

    # -- the window ---------------------------------------------------------
    def _call(self, fn: Callable[..., int], *args: object) -> int:
        """Calls a blocking core function; on -EINTR lets Python run its signal
        handlers (Ctrl-C) and calls again."""
        while True:
            r = fn(*args)
            if r != -errno_mod.EINTR:
                return r

    def freeze(self) -> FreezeSession:
        if self._session is None:
            self.start()
        _, lib = core()
        # the guardian answers by its deadline: the first FIFREEZE comes at the
        # latest presync bound + cap after the command, the cap runs from there
        bound = (self.presync_timeout if self.presync else 0) + 2 * self.timeout + _REPLY_MARGIN_S
        wait = time.monotonic_ns() + int(bound * 1e9)
        try:
            r = self._call(lib.vmsnap_session_freeze, self._session, 1 if self.presync else 0, wait)
        except BaseException:
            self.thaw()
            raise
        self._collect()
        if r == -errno_mod.ECHILD:
            self._finish()
            raise FreezeError("the guardian died during the freeze; everything was thawed")
        if r < 0 and r != -errno_mod.ECANCELED:
            self.thaw()
            raise FreezeError("freeze did not complete: %s" % os.strerror(-r))
        return self

    def thawed_early(self) -> str | None:
        """None while every filesystem this session froze is still frozen and
        the guardian has not begun to thaw; else the cause ('deadline',
        'signal to the guardian', 'vmsnap thaw --force from another shell',
        'guardian died', 'controller died', ...).  Asks without waiting: call
        it after the snapshot step, before ``thaw()``."""
        if self._session is None:
            return thaw_cause(self._thaw_code) if self._thawed else "not frozen"
        _, lib = core()
        code = lib.vmsnap_session_thaw_cause(self._session)
        if code:
            return thaw_cause(code)
        sh = self._shared
        if time.monotonic_ns() >= sh.deadline_ns:
            return thaw_cause(lib.VMSNAP_THAW_DEADLINE)   # the guardian is about to thaw
        for i, m in enumerate(self.mounts):
            st = state_name(sh.fs[i].state)
            if sh.fs[i].freeze_end_ns and st in THAW_BEGUN:
                return "%s thawed from outside (%s)" % (m.mountpoint, st)
        return None

    def thaw(self) -> FreezeSession:
        """Thaws what this session froze (idempotent)."""
        if self._thawed or self._session is None:
            return self
        _, lib = core()
        r = self._call(lib.vmsnap_session_thaw, self._session,
                       time.monotonic_ns() + int(_REPLY_MARGIN_S * 1e9))
        if r == -errno_mod.ETIMEDOUT:
            lib.vmsnap_session_emergency_thaw(self._session)
        self._collect()
        self._finish()
        return self

    def detach(self) -> FreezeSession:
        """Leaves the guardian holding the freeze until its deadline or
        ``thaw_recorded()``; this process may then exit."""
        _, lib = core()
        r = lib.vmsnap_session_detach(self._session)
        if r < 0:
            raise FreezeError("cannot hand the freeze to the guardian: %s" % os.strerror(-r))
        self._collect()
        self.detached = True
        self._thawed = True  # not ours to thaw any more
        lib.vmsnap_session_free(self._session)
        self._session = None
        self._shared = None
        return self

    def _finish(self) -> None:
        _, lib = core()
        self._thawed = True
        leftover = any(m.state in LEFT_OVER for m in self.mounts)
        lib.vmsnap_session_free(self._session)
        self._session = None
        self._shared = None
        if not leftover:
            self._remove_record()

    def _collect(self) -> None:
        sh = self._shared
        if sh is None:
            return
        first = last = 0
        for i, m in enumerate(self.mounts):
            e = sh.fs[i]
            m.state = state_name(e.state)
            m.sync_ms = _ms(e.sync_start_ns, e.sync_end_ns)
            m.sync_errno = e.sync_errno
            m.freeze_ms = _ms(e.freeze_start_ns, e.freeze_end_ns)
            m.thaw_ms = _ms(e.thaw_start_ns, e.thaw_end_ns)
            m.blocked_ms = _ms(e.freeze_start_ns, e.thaw_end_ns)
            m.late = bool(e.late)
            err = e.freeze_errno or e.thaw_errno
            m.errno = err
            m.error = _mount_error(m.state, err)
            if e.freeze_start_ns and (not first or e.freeze_start_ns < first):
                first = e.freeze_start_ns
            last = max(last, e.thaw_end_ns, e.freeze_end_ns if not e.thaw_end_ns else 0)
        self.deadline_ns = sh.deadline_ns
        self.deadline_hit = bool(sh.deadline_hit)
        self.rcu_expedited = bool(sh.rcu_expedited)
        self._thaw_code = sh.thaw_reason
        self.thaw_reason = thaw_reason_name(sh.thaw_reason)
        self.presync_ms = _ms(sh.presync_start_ns, sh.presync_end_ns)
        self.presync_timed_out = bool(sh.presync_timed_out)
        self.window_ms = _ms(first, last) if first else None
        self.first_freeze_ns = first or None

    # -- reading the outcome ------------------------------------------------
    @property
    def all_frozen(self) -> bool:
        return all(m.frozen for m in self.mounts)

    @property
    def failures(self) -> list[MountResult]:
        return [m for m in self.mounts if not m.frozen]

    def __enter__(self) -> FreezeSession:
        return self.freeze()

    def __exit__(self, *exc: object) -> Literal[False]:
        self.thaw()
        return False

    def __del__(self) -> None:
        # a session dropped without thaw: the guardian thaws on the socket EOF
        if getattr(self, "_session", None) is not None:
            try:
                self.thaw()
            except Exception:
                pass


def _seconds(what: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError("%s must be a number of seconds, not %r" % (what, value)) from None
    if not 0 < v <= MAX_TIMEOUT_S:
        raise ValueError("%s must be more than 0 and at most %d s (30 days), not %r"
                         % (what, MAX_TIMEOUT_S, value))
    return v


def _mount_error(state: str, err: int) -> str | None:
    if state == "busy":
        return "already frozen by someone else (EBUSY): left alone"
    if state == "failed":
        return "freeze failed: %s (%s)" % (os.strerror(err), errno_name(err))
    if state == "thaw-failed" and err == errno_mod.ESTALE:
        return "thaw failed: the fd is not the mount point we froze (ESTALE): left alone"
    if state == "thaw-failed":
        return "thaw failed: %s (%s)" % (os.strerror(err), errno_name(err))
    if state == "not-frozen":
        return "not frozen when the thaw came (EINVAL): thawed by someone else"
    if state == "freezing":
        return "freeze still in progress in the kernel"
    if state in ("pending", "syncing", "synced", "skipped"):
        return "not frozen: the freeze was called off before its turn (its deadline passed, " \
               "or another filesystem failed)"
    return None


def freeze_filesystems(mountpoints: Iterable[str | mountinfo.Candidate], timeout: float, presync: bool = True,
                       sequential: bool = False, expedite_rcu: bool = True,
                       presync_timeout: float | None = None,
                       schedule: str = DEFAULT_SCHEDULE,
                       dirty_cap_mb: int = DEFAULT_DIRTY_CAP_MB) -> FreezeSession:
    """Returns a FreezeSession for MOUNTPOINTS; entering it freezes, leaving it thaws.

    The guardian thaws TIMEOUT seconds after the first FIFREEZE whatever
    happens; the presync before is bounded by PRESYNC_TIMEOUT (default
    min(timeout, 30 s)).  Raises OSError (with the path) if a mount point
    cannot be opened, FreezeError if the guardian cannot be started;
    per-filesystem failures are in ``mounts``.  sequential=True freezes one
    filesystem at a time (for comparisons).  expedite_rcu=True (the default)
    switches /sys/kernel/rcu_expedited on for the few milliseconds of the
    freeze waves and back: each FIFREEZE waits for RCU grace periods, ~20 ms
    each otherwise.  schedule="jit" (the default) starts, within a level,
    the freezes the presync found quick only once the slow ones are frozen,
    so a quiet filesystem is not blocked while a busy neighbour flushes;
    "parallel" starts a whole level at once.  Either way every FIFREEZE has
    returned before the freeze is reported done.  dirty_cap_mb caps each
    device's dirty data during the presync (strict_limit and max_bytes under
    /sys/class/bdi, put back as soon as its freeze returns, by whoever thaws
    if the guardian dies); 0 leaves the devices alone.
    """
    return FreezeSession(mountpoints, timeout, presync=presync, sequential=sequential,
                         expedite_rcu=expedite_rcu, presync_timeout=presync_timeout,
                         schedule=schedule, dirty_cap_mb=dirty_cap_mb)


# -- crash records ------------------------------------------------------------

class RecordedThaw(Record):
    __slots__ = ("mountpoint", "outcome", "record")
    mountpoint: str | None   # None: the outcome is about the record itself
    outcome: str   # "thawed", "not frozen (EINVAL)", "thawed by its guardian", "failed: ..."
    record: str | None   # the record it came from

    def __init__(self, mountpoint: str | None, outcome: str, record: str | None = None) -> None:
        self.mountpoint = mountpoint
        self.outcome = outcome
        self.record = record


class IncompleteRecord(ValueError):
    """A record shorter than its header or still all zeros: its creator
    died (or is) between creating the file and writing it."""


# freeze-PID-START-RANDOM.rec: its creator (pid + /proc start time); a
# gentle presync's is freeze-PID-START-gentle-RANDOM.rec; an older vmsnap
# wrote freeze-PID-MONOTONIC.rec (and freeze-gentle-RANDOM.rec)
_RECORD_NAME = re.compile(r"^freeze-(\d+)-(\d+)(-(?:gentle-)?[0-9a-f]+)?\.rec$")


def _creator_gone(path: str) -> bool:
    """Whether the process that created the record at PATH is gone."""
    m = _RECORD_NAME.match(os.path.basename(path))
    if m is None:
        return False
    pid = int(m.group(1))
    if m.group(3):
        return not process.alive(pid, int(m.group(2)))
    return process.starttime(pid) is None   # no start time in an old name: the pid alone


def _check_runtime_dir(rdir: str) -> str | None:
    """Why records in RDIR are not to be trusted, or None: only root may
    have written them (a root-owned directory of mode 0700)."""
    try:
        st = os.lstat(rdir)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or stat.S_IMODE(st.st_mode) != 0o700:
        return "%s is not a root-owned directory of mode 0700 (owner uid %d, mode %o)" % (
            rdir, st.st_uid, stat.S_IMODE(st.st_mode))
    return None


def _read_record(path: str, fd: int | None = None) -> tuple[CData, CData]:
    """The record at PATH (or open as FD) as (buffer, struct vmsnap_shared *);
    ValueError if it is not one of ours or anyone but root could have
    written it, IncompleteRecord if it was never written."""
    ffi, lib = core()
    own = fd is None
    if fd is None:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or stat.S_IMODE(st.st_mode) != 0o600:
            raise ValueError("untrusted record (owner uid %d, mode %o; vmsnap writes root's "
                             "0600): ignored" % (st.st_uid, stat.S_IMODE(st.st_mode)))
        size = ffi.sizeof("struct vmsnap_shared")
        data = os.pread(fd, size, 0)
    finally:
        if own:
            os.close(fd)
    buf = ffi.new("char[]", size)
    ffi.memmove(buf, data, len(data))
    sh = ffi.cast("struct vmsnap_shared *", buf)
    header = ffi.offsetof("struct vmsnap_shared", "fs")
    if len(data) < header or sh.magic == 0:
        raise IncompleteRecord("an incomplete record (%d bytes)" % len(data))
    if sh.magic != lib.VMSNAP_RECORD_MAGIC or not 0 < sh.n <= lib.VMSNAP_MAX_FS:
        raise ValueError("not a vmsnap freeze record")
    if sh.abi != lib.VMSNAP_ABI_VERSION:
        raise ValueError("a record of another vmsnap version (ABI %d, this is %d): thaw its "
                         "filesystems with fsfreeze -u" % (sh.abi, lib.VMSNAP_ABI_VERSION))
    return buf, sh


def _records() -> list[str]:
    return sorted(glob.glob(os.path.join(runtime_dir(), "freeze-*.rec")))


def active_records() -> list[str]:
    """Paths of freeze records whose guardian is still alive."""
    _, lib = core()
    if _check_runtime_dir(runtime_dir()):
        return []
    out = []
    for path in _records():
        try:
            _, sh = _read_record(path)
        except (OSError, ValueError):
            continue
        if lib.vmsnap_process_matches(sh.guardian_pid, sh.guardian_starttime):
            out.append(path)
    return out


def _live_run(sh: CData) -> bool:
    """The record is a run's in progress: not detached and its controller alive."""
    _, lib = core()
    return not sh.detached and bool(lib.vmsnap_process_matches(sh.controller_pid,
                                                               sh.controller_starttime))


def _thaw_one_record(path: str, sh: CData, buf: CData, force: bool,
                     timeout: float) -> list[RecordedThaw]:
    ffi, lib = core()
    names = [os.fsdecode(ffi.string(sh.fs[i].path)) for i in range(sh.n)]
    pid, start = sh.guardian_pid, sh.guardian_starttime
    if lib.vmsnap_process_matches(pid, start):
        process.signal_identity(pid, start, signal.SIGUSR2)   # the guardian records who asked
        process.wait_gone(pid, start, timeout)
        if not os.path.exists(path):
            return [RecordedThaw(mp, "thawed by its guardian") for mp in names]
        buf, sh = _read_record(path)   # the guardian left the record: its final word
    before = [state_name(sh.fs[i].state) for i in range(sh.n)]
    # a record not rewritten in the window never learnt what was frozen
    unknown = [i for i, st in enumerate(before)
               if not sh.record_live and st in ("pending", "syncing", "synced")]
    if force:
        for i in unknown:
            sh.fs[i].state = lib.VMSNAP_FS_FREEZING   # thawed as ours, fd checked first
            before[i] = "unknown"
        unknown = []
    lib.vmsnap_thaw_state(sh, ffi.NULL)   # parents first, rcu_expedited restored
    out, keep = [], bool(unknown)
    for i, mp in enumerate(names):
        st, err = state_name(sh.fs[i].state), sh.fs[i].thaw_errno
        if i in unknown:
            out.append(RecordedThaw(mp, "failed: state unknown (the record could not be "
                                        "kept during the freeze): not thawed; `vmsnap thaw "
                                        "--force` thaws it"))
        elif before[i] not in MAYBE_OURS | {"unknown"}:
            out.append(RecordedThaw(mp, "not frozen by vmsnap (%s): left alone" % before[i]))
        elif st == "thawed":
            out.append(RecordedThaw(mp, "thawed"))
        elif st == "not-frozen":
            out.append(RecordedThaw(mp, "not frozen (EINVAL): nothing to thaw"))
        elif err == errno_mod.ESTALE:
            keep = True
            out.append(RecordedThaw(mp, "failed: the mount point is gone or another "
                                        "filesystem is there now: left alone, record kept"))
        else:
            keep = True
            out.append(RecordedThaw(mp, "failed: %s (%s)" % (os.strerror(err), errno_name(err))))
    if not keep:
        try:
            os.unlink(path)
        except OSError:
            pass
    return out


def thaw_recorded(timeout: float = 10.0, force: bool = False) -> list[RecordedThaw]:
    """Thaws whatever earlier sessions left frozen, from their records.

    A live guardian is asked to thaw (SIGUSR2) and waited for; when none is
    left, the entries the record shows this run may have frozen are thawed
    directly, parents first, each after checking that it is still the same
    directory (the C core's vmsnap_thaw_state()).  Only records root wrote
    (0600, in a root-owned 0700 directory) are read.  A run still in
    progress (its controller alive, not a detached `vmsnap freeze`) is left
    alone unless FORCE: BusyError names it.  Returns a RecordedThaw per
    filesystem, and one with mountpoint None per record that could not be
    used (ignored, untrusted) or was removed: an empty record whose creator
    (pid + start time, in its name) died while creating it.
    """
    rdir = runtime_dir()
    problem = _check_runtime_dir(rdir)
    if problem:
        return [RecordedThaw(None, "failed: untrusted runtime directory: %s" % problem, rdir)]
    results = []
    for path in _records():
        try:
            buf, sh = _read_record(path)
        except IncompleteRecord as exc:
            # created, never written: nothing was frozen under it yet
            if _creator_gone(path):
                try:
                    os.unlink(path)
                    results.append(RecordedThaw(None, "removed: %s, left by a process that "
                                                      "died while creating it" % exc, path))
                except FileNotFoundError:
                    pass
            continue   # else still being written: not ours to judge
        except (OSError, ValueError) as exc:
            results.append(RecordedThaw(None, "ignored: %s" % exc, path))
            continue
        if _live_run(sh) and sh.guardian_pid <= 0 and all(
                sh.fs[i].state == core()[1].VMSNAP_FS_PENDING for i in range(sh.n)):
            # a run's gentle presync (no guardian, nothing frozen): the run puts
            # its devices back itself, and its pacing would cap them again with
            # no record left to restore from
            results.append(RecordedThaw(None, "left alone: a run in progress (pid %d) paces its "
                                              "writeback; nothing is frozen" % sh.controller_pid,
                                        path))
            continue
        if not force and _live_run(sh):
            raise BusyError("a vmsnap run (pid %d, record %s) holds these filesystems frozen "
                            "and thaws them itself; `vmsnap thaw --force` thaws them now "
                            "(the run then reports an early thaw)" % (sh.controller_pid, path))
        try:
            for r in _thaw_one_record(path, sh, buf, force, timeout):
                r.record = path
                results.append(r)
        except (OSError, ValueError) as exc:
            results.append(RecordedThaw(None, "failed: %s" % exc, path))
    return results
