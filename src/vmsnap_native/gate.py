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

FILE's directory must be root's and writable by root only: it is opened
once, and the run does not freeze (and says why) otherwise -- whoever can
write there could tell the host when to freeze, or plant a FIFO or a
symlink at one of its names.  Every name is used through that directory's
fd (opsfile.py): FILE is read only if it is a plain file of root's, at most
4 KiB, without following a symlink or waiting on a FIFO; FILE.armed and
FILE.told are written to unpredictable temp names (O_EXCL) and renamed.
FILE's text is never echoed, except an abort's short reason.

Once told, T and LATEST must be finite and T before the freeze timeout's
bound; the wait then runs on the monotonic clock, so a step of the wall
clock moves nothing, and a step since arming (wall minus monotonic moved by
more than 0.05 s, plus what a slew can do) means no freeze: the instant
the controller computed from an offset measured before the step would be
wrong.  FILE rewritten while the run waits for T (the role's release
writes ``abort``) cancels the freeze.  A step during the freeze itself is
measured as the snapshot step starts and handed to it as
VMSNAP_CLOCK_MOVED ("MOVED ALLOWED", seconds; the run also warns): the
host's wall-clock times of the freeze cannot be trusted then.

It runs before the window (ctypes is imported here, on first use, so that
a run without --freeze-at does not pay for it).
"""

from __future__ import annotations

import errno
import math
import os
import threading
import time
from collections.abc import Iterable

TYPE_CHECKING = False   # true for type checkers; `typing` is not imported for it
if TYPE_CHECKING:
    from .logbook import Logbook

POLL_S = 0.01
# how long arming waits for its flush of the filesystems, at most (s)
ARM_FLUSH_BOUND_S = 30.0
POLL_CANCEL_S = 0.05   # FILE re-read while waiting for T: rewritten = cancelled


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


MAX_FILE_BYTES = 4096      # FILE says "T LATEST" or "abort REASON": a line
MAX_REASON_CHARS = 200     # of an abort's reason, in the result
CLOCK_STEP_S = 0.05        # wall minus monotonic may drift this much (plus slew) before a freeze


def _skew() -> float:
    """The wall clock minus the monotonic clock: constant unless the wall
    clock is stepped (or slewed, at most 500 ppm)."""
    best = (float("inf"), 0.0)
    for _ in range(3):   # the tightest of three: a preemption between the reads is not a step
        m0 = time.monotonic()
        w = time.time()
        m1 = time.monotonic()
        best = min(best, (m1 - m0, w - (m0 + m1) / 2))
    return best[1]


def clock_step_allowed(elapsed: float) -> float:
    """How far wall minus monotonic may move in ELAPSED seconds without a step."""
    return CLOCK_STEP_S + 0.0005 * max(0.0, elapsed)


def clock_moved(armed: dict[str, float]) -> tuple[float, float] | None:
    """Once frozen: (how far the wall clock moved against the monotonic clock
    since arming, how far it may without a step), or None when not armed.  A
    step during the freeze itself is past the instant's check: the run hands
    this to its snapshot step (VMSNAP_CLOCK_MOVED), so that whoever judges
    when this host froze by its wall clock can tell (the group verdict)."""
    if "skew" not in armed:
        return None
    return _skew() - armed["skew"], clock_step_allowed(time.monotonic() - armed["mono"])


def _open_dir(path: str) -> int:
    """FILE's directory, opened once, if only this user (root) can change it:
    anyone else who can write there could plant FILE (and be obeyed), a FIFO,
    or a symlink at any of its names."""
    from . import opsfile
    d = os.path.dirname(path) or "."
    dfd = opsfile.open_directory(d)
    try:
        st = os.fstat(dfd)
        if st.st_uid != os.geteuid():
            raise OSError(errno.EPERM, "belongs to uid %d, not to uid %d (FILE's directory "
                          "must be root's)" % (st.st_uid, os.geteuid()), d)
        if st.st_mode & 0o022:
            raise OSError(errno.EPERM, "is writable by %s (FILE's directory must be writable "
                          "by root only)" % ("group and others" if st.st_mode & 0o022 == 0o022
                                             else "its group" if st.st_mode & 0o020
                                             else "others"), d)
    except BaseException:
        os.close(dfd)
        raise
    return dfd


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return "%s: %s" % (exc.filename, exc.strerror) if exc.filename else str(exc.strerror)
    return str(exc)


def _read(dfd: int, name: str) -> str | None:
    """FILE's text (a plain file of root's, bounded; never blocks), or None
    while there is none."""
    from . import opsfile
    data = opsfile.read_own(dfd, name, limit=MAX_FILE_BYTES)
    return None if data is None else data.decode("utf-8", errors="replace")


def _parse(text: str) -> tuple[float, float] | str:
    """(T, LATEST), or why not to freeze."""
    words = text.split()
    if words[:1] == ["abort"]:
        reason = " ".join(words[1:])
        reason = "".join(c if c.isprintable() else "?" for c in reason)
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[:MAX_REASON_CHARS] + "..."
        return "told not to freeze: %s" % (reason or "no reason given")
    try:
        if len(words) != 2:
            raise ValueError
        at, latest = float(words[0]), float(words[1])
    except ValueError:
        return ("told not to freeze: FILE does not say \"T LATEST\" (%d bytes): not frozen"
                % len(text.encode("utf-8", errors="replace")))
    if not (math.isfinite(at) and math.isfinite(latest)):
        return "told an instant that is not a finite time (T LATEST): not frozen"
    return at, latest


def wait_for_instant(path: str, mountpoints: Iterable[str], limit_s: float,
                     log: Logbook, armed: dict[str, float] | None = None) -> str | None:
    """Arms (syncs, writes PATH.armed), waits for PATH and then for its
    instant.  None: freeze now; else why not (the run reports it).  ARMED,
    if given, gets what ``clock_moved`` needs once the run is frozen."""
    give_up = time.monotonic() + limit_s
    # the flush that makes the freeze's own presync short, bounded: a device that
    # hangs must not hold the host quiesced past its freeze timeout (the thread
    # is left in its syncfs; the freeze's presync has its own bound)
    flush = threading.Thread(target=_syncfs_all, args=(list(mountpoints),), daemon=True,
                             name="vmsnap-arm-flush")
    flush.start()
    flush.join(min(limit_s, ARM_FLUSH_BOUND_S))
    try:
        dfd = _open_dir(path)
    except OSError as exc:
        return "not frozen: cannot use %s's directory (%s)" % (path, _why(exc))
    try:
        return _wait(dfd, os.path.basename(path), path, limit_s, give_up, log,
                     armed if armed is not None else {})
    except (OSError, ValueError) as exc:
        return "not frozen: %s (%s)" % (_why(exc), path)
    finally:
        os.close(dfd)


def _wait(dfd: int, name: str, path: str, limit_s: float, give_up: float,
          log: Logbook, armed: dict[str, float]) -> str | None:
    from . import opsfile
    armed_at = time.time()
    skew0 = _skew()
    armed_mono = time.monotonic()
    armed.update(skew=skew0, mono=armed_mono)
    opsfile.replace(dfd, name + ".armed", b"%.6f\n" % armed_at, 0o600)
    log.info("armed at %.6f: waiting for the instant to freeze at in %s", armed_at, path)
    text = _read(dfd, name)
    while text is None or not text.endswith("\n"):
        if time.monotonic() >= give_up:
            return ("never told when to freeze (%s) within the freeze timeout, %gs after "
                    "arming: not frozen" % (path, limit_s))
        time.sleep(POLL_S)
        text = _read(dfd, name)
    told_at = time.time()
    told_mono = time.monotonic()
    told = _parse(text)
    if isinstance(told, str):
        return told
    at, latest = told
    try:   # for the caller: when it was told, and the instant it acts on
        opsfile.replace(dfd, name + ".told", b"%.6f %.6f\n" % (told_at, at), 0o600)
    except OSError:
        pass
    if told_at > latest:
        return ("told to freeze at %.6f only at %.6f, past the latest useful instant %.6f "
                "(%.3fs late): not frozen" % (at, told_at, latest, told_at - latest))
    # from here on the monotonic clock: a step of the wall clock moves no target
    at_mono, latest_mono = told_mono + (at - told_at), told_mono + (latest - told_at)
    if at_mono > give_up:
        return ("told to freeze at %.6f, %.3fs from now, past the freeze timeout (%gs after "
                "arming): not frozen" % (at, at - told_at, limit_s))
    while True:
        now = time.monotonic()
        if now >= at_mono:
            break
        time.sleep(min(at_mono - now, POLL_CANCEL_S))
        again = _read(dfd, name)   # rewritten meanwhile (the group ended): cancelled
        if again != text:
            why = _parse(again or "") if again is not None else "its file is gone"
            return "cancelled before the instant %.6f: %s" % (
                at, why if isinstance(why, str) else "told another instant")
    if now > latest_mono:   # woken too late (a loaded host): as good as told too late
        return ("woke at %.6f to freeze at %.6f, past the latest useful instant %.6f: "
                "not frozen" % (at + now - at_mono, at, latest))
    moved = _skew() - skew0
    if abs(moved) > clock_step_allowed(now - armed_mono):
        return ("the wall clock moved by %+.3fs since arming (a clock step): the instant "
                "cannot be trusted: not frozen" % moved)
    log.info("freezing at %.6f (asked for %.6f)", at + now - at_mono, at)
    return None
