"""The gentle presync: the filesystems' dirty data written back at a pace
while the pre-script runs, so that the presync just before the freeze has
little left to flush.

Without it the presync (a syncfs of every filesystem, right before
FIFREEZE) sends a busy neighbour's hundreds of MiB to the disk in one
burst, and a database sharing that disk waits behind it.  Lowering a
device's dirty cap alone does not help against a writer that rewrites
pages already dirty: the kernel never writes them back early.  So while
the pre-script runs, a thread of vmsnap, every ``interval`` seconds:

- lowers each device's cap (strict_limit on, max_bytes) one step, from the
  presync's cap down to ``final_mib`` over ``ramp`` seconds, so that its
  writers are held to what the device writes back;
- flushes each filesystem (syncfs), one after the other: each flush has
  only what was written since the previous one.

At the pre-script's end the thread stops (``stop()``); the caps stay as
they are and the freeze session takes them over with the values saved here
(the guardian puts them back as each filesystem freezes, as for its own
cap).  ``close()`` puts back what was saved, whatever happened.

The values are saved before anything is changed, in a freeze record under
the runtime directory whose entries are never frozen ("pending"): the
reaper's resume (vmsnap SIGKILLed), `vmsnap thaw` and the next run restore
the devices from it through the core's thaw from saved state, as they do
for the session's own cap.  Per device only (/sys/class/bdi/<dev>); no
machine-wide knob is touched.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable

from ._core import CData, core
from .freeze import ensure_runtime_dir

TYPE_CHECKING = False   # true for type checkers; `typing` is not imported for it
if TYPE_CHECKING:
    from typing import Any

# The defaults: a flush of every filesystem each 0.1 s, the cap lowered to
# 16 MiB within the first 2 s; the phase never outlasts BOUND_S.
INTERVAL_S = 0.1
RAMP_S = 2.0
FINAL_MIB = 16
BOUND_S = 300.0
# How long close() waits for a flush in progress.
JOIN_S = 2.0
# In a gentle presync's record name, before its random part.
RECORD_TAG = "gentle-"


def _starttime(pid: int) -> int:
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


class GentlePresync:
    """Paced writeback of MOUNTS (mount points, or objects with
    ``.mount.mountpoint`` and ``.level``: the plan's candidates) from
    ``start()`` to ``stop()``; START_MIB: the cap to begin with (the
    presync's own)."""

    def __init__(self, mounts: Iterable[Any], start_mib: int, final_mib: int = FINAL_MIB,
                 interval: float = INTERVAL_S, ramp: float = RAMP_S,
                 bound: float = BOUND_S) -> None:
        self.targets = [(m, 0) if isinstance(m, str) else (m.mount.mountpoint, m.level)
                        for m in mounts]
        self.start_mib = max(int(start_mib), int(final_mib))
        self.final_mib = int(final_mib)
        self.interval = float(interval)
        self.ramp = float(ramp)
        self.bound = float(bound)
        self.record_path: str | None = None
        self.cap_mib = 0            # the cap set last (MiB), 0: none yet
        self.flushes = 0            # rounds of flushes done
        self.flush_ms: list[float] = []   # each round's time, all filesystems
        self._fds: list[int] = []
        self._buf: CData = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def begin(self) -> None:
        """``save()`` then ``pace()``, or no gentle phase where its record
        cannot be written (the runtime directory): everything put back."""
        self.save()
        self.pace()

    def start(self) -> GentlePresync:
        """``save()`` and ``pace()``; an OSError is raised, not swallowed."""
        self._save()
        self.pace()
        return self

    # -- the saved values, as a record ------------------------------------------
    def save(self) -> None:
        """Saves every device's values in the record, changing nothing yet:
        a run registers the record with its resume between ``save()`` and
        ``pace()``, so that a SIGKILL once a cap is set is undone by the
        reaper.  Where the record cannot be written: no gentle phase."""
        try:
            self._save()
        except OSError:
            self.close()

    def _save(self) -> None:
        """Filesystems that cannot be opened are left out."""
        ffi, lib = core()
        buf = self._buf = ffi.new("struct vmsnap_shared *")
        buf.magic, buf.abi = lib.VMSNAP_RECORD_MAGIC, lib.VMSNAP_ABI_VERSION
        buf.controller_pid, buf.controller_starttime = os.getpid(), _starttime(os.getpid())
        buf.rcu_restore = -1
        buf.record_live = 1   # final states: never frozen here
        for mp, level in self.targets[:lib.VMSNAP_MAX_FS]:
            try:
                fd = os.open(mp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                continue
            st = os.fstat(fd)
            e = buf.fs[len(self._fds)]
            e.level, e.state, e.dev, e.ino = level, lib.VMSNAP_FS_PENDING, st.st_dev, st.st_ino
            raw = os.fsencode(mp)[:lib.VMSNAP_PATH_MAX - 1]
            ffi.memmove(e.path, raw, len(raw))
            self._fds.append(fd)
        buf.n = len(self._fds)
        if not buf.n or not lib.vmsnap_dirty_cap_save(buf):
            self.close()
            return
        self._write_record()

    def pace(self) -> None:
        """Sets the first cap and starts the pacing thread (nothing where
        ``save()`` saved nothing)."""
        if self.record_path is None or self._thread is not None:
            return
        self._set_cap(self.start_mib)
        self._thread = threading.Thread(target=self._pace, name="vmsnap-gentle-presync",
                                        daemon=True)
        self._thread.start()

    def _write_record(self) -> None:
        ffi, _ = core()
        # named as the session's records are (its creator, pid + start time):
        # one found empty after a crash is removed once that process is gone
        me = os.getpid()
        path = os.path.join(ensure_runtime_dir(), "freeze-%d-%d-%s%s.rec" % (
            me, _starttime(me), RECORD_TAG, os.urandom(8).hex()))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o600)
        try:
            os.write(fd, bytes(ffi.buffer(self._buf)))
        finally:
            os.close(fd)
        self.record_path = path

    def _set_cap(self, mib: int) -> bool:
        """Sets the cap, unless the phase was stopped (the session owns the caps then)."""
        _, lib = core()
        with self._lock:
            if self._stopped.is_set():
                return False
            lib.vmsnap_dirty_cap_set(self._buf, int(mib) << 20)
            self.cap_mib = int(mib)
            return True

    # -- the pace ----------------------------------------------------------------
    def _pace(self) -> None:
        _, lib = core()
        t0 = time.monotonic()
        while not self._stopped.wait(self.interval):
            elapsed = time.monotonic() - t0
            if elapsed > self.bound:
                return
            frac = min(1.0, elapsed / self.ramp) if self.ramp > 0 else 1.0
            cap = round(self.start_mib + (self.final_mib - self.start_mib) * frac)
            if cap != self.cap_mib and not self._set_cap(cap):
                return
            t = time.monotonic()
            for fd in self._fds:
                if self._stopped.is_set():
                    return
                lib.vmsnap_syncfs(fd)
            self.flush_ms.append(round((time.monotonic() - t) * 1e3, 3))
            self.flushes += 1

    @property
    def active(self) -> bool:
        return self.record_path is not None

    def stop(self) -> None:
        """Ends the pacing (the pre-script is over): from its return nothing
        here changes a device any more; the caps stay for the session."""
        with self._lock:
            self._stopped.set()

    def saved(self) -> dict[int, tuple[int, int]]:
        """st_dev -> (bdi_saved, max_ratio_fine) as saved: the session starts
        from these instead of the capped values it would read."""
        if self._buf is None:
            return {}
        return {int(self._buf.fs[i].dev): (int(self._buf.fs[i].bdi_saved),
                                           int(self._buf.fs[i].bdi_max_ratio_fine))
                for i in range(self._buf.n) if self._buf.fs[i].bdi_saved}

    def close(self) -> None:
        """Stops, puts every device back as saved and removes the record."""
        _, lib = core()
        self.stop()
        stuck = False
        if self._thread is not None:
            # its flush in progress, if any: it may be stuck on a device that hangs,
            # and the run must end all the same (the fds then stay open with it)
            self._thread.join(JOIN_S)
            stuck = self._thread.is_alive()
        if self._buf is not None:
            lib.vmsnap_dirty_cap_restore(self._buf)   # stopped: the thread sets no cap now
        if not stuck:
            for fd in self._fds:
                os.close(fd)
        self._fds = []
        if self.record_path:
            try:
                os.unlink(self.record_path)
            except FileNotFoundError:
                pass
            self.record_path = None

    def summary(self) -> dict[str, Any]:
        return {"flushes": self.flushes, "cap_mib": self.cap_mib,
                "last_flush_ms": self.flush_ms[-1] if self.flush_ms else None,
                "max_flush_ms": max(self.flush_ms) if self.flush_ms else None}


def for_plan(plan: Any) -> GentlePresync | None:
    """The gentle presync of a run's PLAN, not started yet, or None where
    there is none: freezing off or nothing to freeze, no dirty cap
    (presyncDirtyCapMiB 0), presyncGentle false, or a configuration with no
    file (nothing could undo the caps after a SIGKILL).  The caller keeps it
    before it calls ``begin()`` (a stop signal in the middle must still find
    it to ``close()``).  As the pre-script starts (no pre-script: no gentle
    phase)."""
    s = plan.settings
    if not (s.fs_freeze_enabled and s.presync_gentle and s.dirty_cap_mib > 0) or \
            not plan.selection.eligible or plan.selection.missing:
        return None
    if not plan.config_path:
        # a Config with no file (the Python API): no resume can be registered, so
        # nobody would put the devices back should this process be SIGKILLed
        return None
    return GentlePresync(plan.selection.eligible, start_mib=s.dirty_cap_mib,
                         bound=max(1.0, float(s.timeout)) * (s.pre_retries + 1))
