"""The run's log: a file (default /var/log/vmsnap.log) written as the run
goes, except inside the freeze window, where records are held in memory and
written after the thaw (a write to a frozen filesystem would block)."""

from __future__ import annotations

import os
import time

DEFAULT_LOG_FILE = "/var/log/vmsnap.log"


class Logbook:
    def __init__(self, path: str | None = None):
        self.path = path
        self._held = []
        self._holding = False
        self._fd = None
        self.open_error = None
        if path:
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                                   0o600)
            except OSError as exc:
                self.open_error = "cannot write the log file %s: %s" % (path, exc.strerror)

    def _emit(self, level: str, msg: str, args) -> None:
        if args:
            msg = msg % args
        record = (time.time(), level, msg)
        if self._holding:
            self._held.append(record)   # formatted after the thaw: no work in the window
        else:
            self._write(record)

    def _write(self, record) -> None:
        ts, level, msg = record
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + ".%03dZ" % (ts % 1 * 1000)
        line = "%s vmsnap[%d] %s %s\n" % (stamp, os.getpid(), level, msg)
        if self._fd is not None:
            try:
                os.write(self._fd, line.encode("utf-8", "replace"))
            except OSError:
                pass

    def info(self, msg, *args):
        self._emit("INFO", msg, args)

    def warning(self, msg, *args):
        self._emit("WARNING", msg, args)

    def error(self, msg, *args):
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
