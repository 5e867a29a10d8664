"""Freeze sessions: parallel FIFREEZE/FITHAW under a guardian process.

``freeze_filesystems(mountpoints, timeout)`` opens every mount point, starts
the guardian (csrc/guardian.c), and freezes in parallel waves, children
first.  The guardian thaws at the deadline, when this process dies, or when
told to; a record under /run/vmsnap/ lets ``thaw_recorded()`` finish the job
after a crash of both.
"""

from __future__ import annotations

import dataclasses
import errno as errno_mod
import glob
import os
import select
import signal
import time
from dataclasses import dataclass

from . import mountinfo
from ._core import core
from .errors import FreezeError

RUNTIME_DIR_ENV = "VMSNAP_RUNTIME_DIR"
DEFAULT_RUNTIME_DIR = "/run/vmsnap"
# The controller waits this long past the freeze deadline for the guardian's answer.
_REPLY_MARGIN_S = 10.0

STATE_NAMES = {
    0: "pending", 1: "syncing", 2: "synced", 3: "freezing", 4: "frozen", 5: "thawing",
    6: "thawed", 7: "busy", 8: "failed", 9: "skipped", 10: "thaw-failed",
}
_NOT_OURS = {"busy", "failed", "skipped", "thawed"}  # certainly not frozen by the session
THAW_REASONS = {0: None, 1: "requested", 2: "deadline", 3: "controller-died", 4: "signal",
                5: "emergency"}


def errno_name(err: int) -> str:
    if err == errno_mod.EOPNOTSUPP:  # Python names 95 ENOTSUP; the kernel docs say EOPNOTSUPP
        return "EOPNOTSUPP"
    return errno_mod.errorcode.get(err, str(err))


def runtime_dir() -> str:
    return os.environ.get(RUNTIME_DIR_ENV) or DEFAULT_RUNTIME_DIR


def _ms(start: int, end: int):
    if not start or not end or end < start:
        return None
    return round((end - start) / 1e6, 3)


@dataclass
class MountResult:
    """What happened to one filesystem in a freeze session."""

    mountpoint: str
    fstype: str
    device: str
    level: int
    state: str = "pending"
    errno: int = 0
    error: str | None = None
    sync_ms: float | None = None
    sync_errno: int = 0           # ENOSYS: no syncfs here, the presync was skipped
    freeze_ms: float | None = None
    thaw_ms: float | None = None

    @property
    def frozen(self) -> bool:
        """This session froze it (and so thaws it)."""
        return self.state in ("frozen", "thawing", "thawed", "thaw-failed")

    def to_dict(self) -> dict:
        return {
            "mountpoint": self.mountpoint, "fstype": self.fstype, "device": self.device,
            "frozen": self.frozen, "state": self.state, "freeze_ms": self.freeze_ms,
            "thaw_ms": self.thaw_ms, "sync_ms": self.sync_ms, "error": self.error,
        }


def fd_mount_id(fd: int):
    """The id of the mount an open fd is on (/proc/self/fdinfo), or None."""
    try:
        with open("/proc/self/fdinfo/%d" % fd) as f:
            for line in f:
                if line.startswith("mnt_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _targets(mountpoints) -> list:
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
                m = mountinfo.Mount(**{**m.__dict__, "mountpoint": p})
            cands.append(mountinfo.Candidate(m, True))
        mountinfo.assign_levels(cands)   # candidates from select() come with theirs
    cands.sort(key=lambda c: (c.level, c.mount.mountpoint))
    return cands


class FreezeSession:
    """Frozen filesystems, held by a guardian until ``thaw()`` (or the deadline).

    Use as a context manager::

        with freeze_filesystems(["/data"], timeout=10) as s:
            take_snapshot()          # writes to /data block meanwhile
        print(s.window_ms, s.mounts)

    After the freeze, ``mounts`` holds a MountResult per filesystem and
    ``all_frozen`` tells whether every one of them froze.  A filesystem that
    fails to freeze (EOPNOTSUPP, EBUSY: frozen by someone else) is reported,
    not raised; the caller decides.  Nothing that someone else froze is ever
    thawed by the session.
    """

    def __init__(self, mountpoints, timeout: float, presync: bool = True,
                 sequential: bool = False, expedite_rcu: bool = True):
        if not timeout or timeout <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        self.timeout = float(timeout)
        self.presync = presync
        self.expedite_rcu = expedite_rcu
        self.rcu_expedited = False   # whether the guardian did expedite for this freeze
        self.targets = _targets(list(mountpoints))
        if sequential:
            # one filesystem per wave, in the same order: how the peers freeze
            self.targets = [dataclasses.replace(c, level=i) for i, c in enumerate(self.targets)]
        if not self.targets:
            raise FreezeError("no filesystem to freeze")
        if len(self.targets) > 128:
            raise FreezeError("at most 128 filesystems per session (got %d)" % len(self.targets))
        self.mounts = [MountResult(c.mount.mountpoint, c.mount.fstype, c.mount.device, c.level)
                       for c in self.targets]
        self.deadline_ns = 0
        self.deadline_hit = False
        self.thaw_reason = None
        self.guardian_pid = None
        self.record_path = None
        self.window_ms = None
        self.first_freeze_ns = None   # CLOCK_MONOTONIC of the first FIFREEZE issued
        self.detached = False
        self._fds = []
        self._session = None
        self._shared = None
        self._thawed = False

    # -- set-up -----------------------------------------------------------
    def _open_all(self):
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

    def _close_fds(self):
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []

    def _open_record(self, devs):
        """The crash record; live (rewritten by the guardian) only where writing it
        cannot block on a filesystem we freeze."""
        rdir = runtime_dir()
        try:
            os.makedirs(rdir, mode=0o700, exist_ok=True)
            path = os.path.join(rdir, "freeze-%d-%d.rec" % (os.getpid(), time.monotonic_ns()))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError:
            return -1, None, False
        live = os.fstat(fd).st_dev not in devs
        return fd, path, live

    def start(self) -> "FreezeSession":
        """Opens everything and starts the guardian; nothing is frozen yet."""
        ffi, lib = core()
        self._open_all()
        devs = set()
        init = ffi.new("struct vmsnap_shared *")
        init.n = len(self.targets)
        self.deadline_ns = time.monotonic_ns() + int(self.timeout * 1e9)
        init.deadline_ns = self.deadline_ns
        for i, (c, fd) in enumerate(zip(self.targets, self._fds)):
            st = os.fstat(fd)
            devs.add(st.st_dev)
            e = init.fs[i]
            e.fd = fd
            e.level = c.level
            e.dev = st.st_dev
            raw = os.fsencode(c.mount.mountpoint)[:4095]
            ffi.memmove(e.path, raw, len(raw))
        record_fd, self.record_path, live = self._open_record(devs)
        init.record_live = 1 if live else 0
        init.expedite_rcu = 1 if self.expedite_rcu else 0
        ret = ffi.new("struct vmsnap_session **")
        try:
            r = lib.vmsnap_session_start(init, record_fd,
                                         os.fsencode(self.record_path or ""), ret)
        finally:
            if record_fd >= 0:
                os.close(record_fd)
        if r < 0:
            self._close_fds()
            self._remove_record()
            raise FreezeError("cannot start the guardian: %s" % os.strerror(-r))
        self._session = ret[0]
        self._shared = lib.vmsnap_session_shared(self._session)
        self.guardian_pid = lib.vmsnap_session_guardian_pid(self._session)
        return self

    def _remove_record(self):
        if self.record_path:
            try:
                os.unlink(self.record_path)
            except OSError:
                pass

    # -- the window ---------------------------------------------------------
    def _call(self, fn, *args):
        """Calls a blocking core function; on -EINTR lets Python run its signal
        handlers (Ctrl-C) and calls again."""
        while True:
            r = fn(*args)
            if r != -errno_mod.EINTR:
                return r

    def freeze(self) -> "FreezeSession":
        if self._session is None:
            self.start()
        _, lib = core()
        wait = self.deadline_ns + int(_REPLY_MARGIN_S * 1e9)
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

    def thaw(self) -> "FreezeSession":
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

    def detach(self) -> "FreezeSession":
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
        self._close_fds()
        return self

    def _finish(self):
        _, lib = core()
        self._thawed = True
        leftover = any(m.state in ("frozen", "freezing", "thaw-failed") for m in self.mounts)
        lib.vmsnap_session_free(self._session)
        self._session = None
        self._shared = None
        self._close_fds()
        if not leftover:
            self._remove_record()

    def _collect(self):
        ffi, _ = core()
        sh = self._shared
        if sh is None:
            return
        first = last = 0
        for i, m in enumerate(self.mounts):
            e = sh.fs[i]
            m.state = STATE_NAMES.get(e.state, str(e.state))
            m.sync_ms = _ms(e.sync_start_ns, e.sync_end_ns)
            m.sync_errno = e.sync_errno
            m.freeze_ms = _ms(e.freeze_start_ns, e.freeze_end_ns)
            m.thaw_ms = _ms(e.thaw_start_ns, e.thaw_end_ns)
            err = e.freeze_errno or e.thaw_errno
            m.errno = err
            if m.state == "busy":
                m.error = "already frozen by someone else (EBUSY): left alone"
            elif m.state == "failed":
                m.error = "freeze failed: %s (%s)" % (os.strerror(err), errno_name(err))
            elif m.state == "thaw-failed":
                m.error = "thaw failed: %s (%s)" % (os.strerror(err), errno_name(err))
            elif m.state == "freezing":
                m.error = "freeze still in progress in the kernel"
            if e.freeze_start_ns and (not first or e.freeze_start_ns < first):
                first = e.freeze_start_ns
            last = max(last, e.thaw_end_ns, e.freeze_end_ns if not e.thaw_end_ns else 0)
        self.deadline_hit = bool(sh.deadline_hit)
        self.rcu_expedited = bool(sh.rcu_expedited)
        self.thaw_reason = THAW_REASONS.get(sh.thaw_reason)
        self.window_ms = _ms(first, last) if first else None
        self.first_freeze_ns = first or None

    # -- reading the outcome ------------------------------------------------
    @property
    def all_frozen(self) -> bool:
        return all(m.frozen for m in self.mounts)

    @property
    def failures(self) -> list:
        return [m for m in self.mounts if not m.frozen]

    def __enter__(self):
        return self.freeze()

    def __exit__(self, *exc):
        self.thaw()
        return False

    def __del__(self):
        # a session dropped without thaw: the guardian thaws on the socket EOF
        if getattr(self, "_session", None) is not None:
            try:
                self.thaw()
            except Exception:
                pass


def freeze_filesystems(mountpoints, timeout: float, presync: bool = True,
                       sequential: bool = False, expedite_rcu: bool = True) -> FreezeSession:
    """Returns a FreezeSession for MOUNTPOINTS; entering it freezes, leaving it thaws.

    The guardian thaws after TIMEOUT seconds whatever happens.  Raises
    OSError (with the path) if a mount point cannot be opened, FreezeError if
    the guardian cannot be started; per-filesystem failures are in ``mounts``.
    sequential=True freezes one filesystem at a time (for comparisons).
    expedite_rcu=True (the default) switches /sys/kernel/rcu_expedited on for
    the few milliseconds of the freeze waves and back: each FIFREEZE waits
    for RCU grace periods, ~20 ms each otherwise.
    """
    return FreezeSession(mountpoints, timeout, presync=presync, sequential=sequential,
                         expedite_rcu=expedite_rcu)


# -- crash records ------------------------------------------------------------

@dataclass
class RecordedThaw:
    mountpoint: str
    outcome: str   # "thawed", "not frozen", "guardian thawed", "failed: ..."


def _read_record(path: str):
    ffi, _ = core()
    with open(path, "rb") as f:
        data = f.read()
    size = ffi.sizeof("struct vmsnap_shared")
    buf = ffi.new("char[]", size)
    ffi.memmove(buf, data[:size], min(len(data), size))
    sh = ffi.cast("struct vmsnap_shared *", buf)
    header = ffi.offsetof("struct vmsnap_shared", "fs")
    if len(data) < header or sh.magic != 0x564D534E or not (0 < sh.n <= 128):
        raise ValueError("%s: not a vmsnap freeze record" % path)
    return buf, sh


def _wait_gone(pid: int, starttime: int, timeout: float) -> bool:
    _, lib = core()
    end = time.monotonic() + timeout
    try:
        pfd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        pfd = None
    try:
        while time.monotonic() < end:
            if not lib.vmsnap_process_matches(pid, starttime):
                return True
            if pfd is not None:
                select.select([pfd], [], [], max(0.0, min(0.05, end - time.monotonic())))
            else:
                time.sleep(0.005)
        return not lib.vmsnap_process_matches(pid, starttime)
    finally:
        if pfd is not None:
            os.close(pfd)


def active_records() -> list:
    """Paths of freeze records whose guardian is still alive."""
    _, lib = core()
    out = []
    for path in sorted(glob.glob(os.path.join(runtime_dir(), "freeze-*.rec"))):
        try:
            _, sh = _read_record(path)
        except (OSError, ValueError):
            continue
        if lib.vmsnap_process_matches(sh.guardian_pid, sh.guardian_starttime):
            out.append(path)
    return out


def thaw_recorded(timeout: float = 10.0) -> list:
    """Thaws whatever earlier sessions left frozen, from their records.

    A live guardian is asked to thaw (SIGUSR1) and waited for; when none is
    left, each filesystem the record does not show as certainly not ours is
    thawed directly (after checking it is still the same filesystem).
    Returns a RecordedThaw per filesystem.
    """
    ffi, lib = core()
    results = []
    for path in sorted(glob.glob(os.path.join(runtime_dir(), "freeze-*.rec"))):
        try:
            _, sh = _read_record(path)
        except (OSError, ValueError) as exc:
            results.append(RecordedThaw(path, "unreadable record: %s" % exc))
            continue
        pid, start = sh.guardian_pid, sh.guardian_starttime
        if lib.vmsnap_process_matches(pid, start):
            try:
                os.kill(pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass
            _wait_gone(pid, start, timeout)
            if not os.path.exists(path):
                for i in range(sh.n):
                    results.append(RecordedThaw(os.fsdecode(ffi.string(sh.fs[i].path)),
                                                "thawed by its guardian"))
                continue
            # the guardian left the record: re-read its final word
            try:
                _, sh = _read_record(path)
            except (OSError, ValueError):
                continue
        all_ok = True
        for i in range(sh.n):
            e = sh.fs[i]
            mp = os.fsdecode(ffi.string(e.path))
            if STATE_NAMES.get(e.state) in _NOT_OURS:
                results.append(RecordedThaw(mp, "not frozen by vmsnap (%s)" % STATE_NAMES[e.state]))
                continue
            r = lib.vmsnap_thaw_path(os.fsencode(mp), e.dev)
            if r == 0:
                results.append(RecordedThaw(mp, "thawed"))
            elif r == -errno_mod.EINVAL:
                results.append(RecordedThaw(mp, "not frozen"))
            elif r in (-errno_mod.ESTALE, -errno_mod.ENOENT):
                results.append(RecordedThaw(mp, "another filesystem is there now: left alone"))
            else:
                all_ok = False
                results.append(RecordedThaw(mp, "failed: %s" % os.strerror(-r)))
        if all_ok:
            try:
                os.unlink(path)
            except OSError:
                pass
    return results
