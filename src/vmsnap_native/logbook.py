"""The run's log: a file (default /var/log/vmsnap.log) written as the run
goes, except inside the freeze window, where records are held in memory and
written after the thaw (a write to a frozen filesystem would block).

Under systemd, when stderr is the journal (``JOURNAL_STREAM`` names stderr's
device and inode), every record also goes to stderr with its syslog priority
as a ``<N>`` prefix, so that ``journalctl -p err`` shows the errors.  Those
lines are held through the window as well.

Every record also goes to the standard ``logging`` module, on the ``vmsnap``
logger, for an agent that embeds ``run()`` to route as it likes; held
through the window too, and emitted after the thaw with its own time."""

from __future__ import annotations

import logging
import os
import time

from . import opsfile
from ._paths import DEFAULT_LOG_FILE as DEFAULT_LOG_FILE  # re-exported

# (time.time() when it was made, level name, message)
Record = tuple[float, str, str]

# syslog priorities (sd-daemon.h: SD_ERR, SD_WARNING, SD_INFO)
PRIORITY = {"ERROR": 3, "WARNING": 4, "INFO": 6}

# The agent's way in; a library's logger gets a NullHandler so that, with no
# handler configured anywhere, warnings are not printed to stderr by logging's
# last resort (the CLI prints what it means to print).
LOGGER = logging.getLogger("vmsnap")
LOGGER.addHandler(logging.NullHandler())


def stderr_is_journal(fd: int = 2) -> bool:
    """True when fd is the journal stream systemd connected (JOURNAL_STREAM
    is "DEVICE:INODE" of it); a redirected stderr keeps the variable but is
    another file, and gets plain lines."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def journal_line(text: str, level: str = "INFO") -> str:
    """text with its priority prefix on each line when stderr is the journal
    (for the command's own messages on stderr)."""
    if not stderr_is_journal():
        return text
    prefix = "<%d>" % PRIORITY.get(level.upper(), 6)
    return "\n".join(prefix + line for line in text.split("\n"))


def _to_logging(record: Record) -> None:
    """RECORD on the vmsnap logger, stamped with the time it was made (not
    the time a held record is released)."""
    ts, level, msg = record
    levelno = logging.getLevelName(level)
    if not LOGGER.isEnabledFor(levelno):
        return
    rec = LOGGER.makeRecord(LOGGER.name, levelno, __file__, 0, msg, (), None)
    rec.created, rec.msecs = ts, ts % 1 * 1000
    LOGGER.handle(rec)


class Logbook:
    def __init__(self, path: str | None = None, journal: bool | None = None) -> None:
        self.path = path
        self._held: list[Record] = []
        self._holding = False
        self._fd: int | None = None
        # None: echo to stderr only when stderr is the journal
        self.journal = stderr_is_journal() if journal is None else journal
        self.open_error: str | None = None
        if path:
            try:
                # a plain file of root's only: not a link, FIFO or user's file planted there
                self._fd = opsfile.open_append_own(path)
            except OSError as exc:
                self.open_error = "cannot write the log file %s: %s" % (path, exc.strerror)

    def _emit(self, level: str, msg: str, args: tuple[object, ...]) -> None:
        if args:
            msg = msg % args
        record = (time.time(), level, msg)
        if self._holding:
            self._held.append(record)   # formatted after the thaw: no work in the window
        else:
            self._write(record)

    def _write(self, record: Record) -> None:
        ts, level, msg = record
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + ".%03dZ" % (ts % 1 * 1000)
        line = "%s vmsnap[%d] %s %s\n" % (stamp, os.getpid(), level, msg)
        if self._fd is not None:
            try:
                os.write(self._fd, line.encode("utf-8", "replace"))
            except OSError:
                pass
        if self.journal:
            # the journal stamps time and pid itself; one entry per line
            prefix = "<%d>" % PRIORITY.get(level, 6)
            text = "".join(prefix + part + "\n" for part in msg.split("\n"))
            try:
                os.write(2, text.encode("utf-8", "replace"))
            except OSError:
                pass
        _to_logging(record)

    def info(self, msg: str, *args: object) -> None:
        self._emit("INFO", msg, args)

    def warning(self, msg: str, *args: object) -> None:
        self._emit("WARNING", msg, args)

    def error(self, msg: str, *args: object) -> None:
        self._emit("ERROR", msg, args)

    def hold(self) -> None:
        """From now on keep records in memory (the freeze window begins)."""
        self._holding = True

    def release(self) -> None:
        """Write what was held (the window is over)."""
        self._holding = False
        held, self._held = self._held, []
        for record in held:
            self._write(record)

    def close(self) -> None:
        self.release()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
