"""Freeze at an instant agreed in advance (``vmsnap run --freeze-at FILE``):
how many hosts freeze together without an Ansible fan-out inside the window.

After the pre-script and the hooks' freeze calls, the run flushes the
filesystems it is about to freeze (syncfs: the presync at the freeze then
finds little), writes FILE.armed (this host's clock, seconds since the
epoch) and waits for FILE (once read: FILE.told, when).  FILE says ``T LATEST``: freeze at T, on this
host's clock (the controller has already moved it by the offset it
measured), and not at all if the run learns of it after LATEST: a freeze
that late could not cover the group's snapshot step, so the run reports
why instead of freezing late silently.  ``abort REASON`` (or anything
else) means: do not freeze.  FILE not there within the freeze timeout
(counted from FILE.armed): the controller is gone; the run does not
freeze, and runs its post-script as after any freeze failure.

It runs before the window (ctypes is imported here, on first use, so that
a run without --freeze-at does not pay for it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

TYPE_CHECKING = False   # true for type checkers; `typing` is not imported for it
if TYPE_CHECKING:
    from .logbook import Logbook

POLL_S = 0.01


def _syncfs_all(mountpoints: Iterable[str]) -> None:
    """syncfs(2) on each mount point; errors are left to the freeze's own presync."""
    import ctypes  # here, not at the top: only a run with --freeze-at pays for it
    try:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return
    for m in mountpoints:
        try:
            fd = os.open(m, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            syncfs(fd)
        finally:
            os.close(fd)


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def wait_for_instant(path: str, mountpoints: Iterable[str], limit_s: float,
                     log: Logbook) -> str | None:
    """Arms (syncs, writes PATH.armed), waits for PATH and then for its
    instant.  None: freeze now; else why not (the run reports it)."""
    _syncfs_all(mountpoints)
    armed_at = time.time()
    give_up = time.monotonic() + limit_s
    try:
        _write_atomic(path + ".armed", "%.6f\n" % armed_at)
    except OSError as exc:
        return "cannot say it is armed (%s: %s): not frozen" % (path + ".armed", exc.strerror)
    log.info("armed at %.6f: waiting for the instant to freeze at in %s", armed_at, path)
    text = _read(path)
    while text is None or not text.endswith("\n"):
        if time.monotonic() >= give_up:
            return ("never told when to freeze (%s) within the freeze timeout, %gs after "
                    "arming: not frozen" % (path, limit_s))
        time.sleep(POLL_S)
        text = _read(path)
    told_at = time.time()
    try:   # for the caller: how long before the instant it was told
        _write_atomic(path + ".told", "%.6f\n" % told_at)
    except OSError:
        pass
    words = text.split()
    try:
        at, latest = float(words[0]), float(words[1])
    except (IndexError, ValueError):
        return "told not to freeze: %s" % (" ".join(words[1:] if words[:1] == ["abort"]
                                                    else words) or "no reason given")
    if told_at > latest:
        return ("told to freeze at %.6f only at %.6f, past the latest useful instant %.6f "
                "(%.3fs late): not frozen" % (at, told_at, latest, told_at - latest))
    while True:
        now = time.time()
        if now >= at:
            break
        time.sleep(min(at - now, 1.0))
    if now > latest:   # woken too late (a loaded host): as good as told too late
        return ("woke at %.6f to freeze at %.6f, past the latest useful instant %.6f: "
                "not frozen" % (now, at, latest))
    log.info("freezing at %.6f (asked for %.6f)", now, at)
    return None
