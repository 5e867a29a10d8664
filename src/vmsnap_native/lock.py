"""One vmsnap at a time: an flock on /run/vmsnap/lock.

The kernel drops an flock when its holder dies, so a lock left by a killed
run is recovered by the next one without any clean-up.
"""

from __future__ import annotations

import fcntl
import os

from .errors import BusyError
from .freeze import ensure_runtime_dir, runtime_dir


class RunLock:
    def __init__(self):
        self.path = os.path.join(runtime_dir(), "lock")
        self._fd = None

    def acquire(self, wait: bool = False) -> "RunLock":
        """Takes the lock; WAIT: blocks until the holder is done instead of
        raising BusyError."""
        try:
            ensure_runtime_dir()   # root's alone: the freeze records live there too
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise BusyError("cannot take the lock %s: %s (vmsnap runs as root)"
                            % (self.path, exc.strerror)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            try:
                holder = os.pread(fd, 32, 0).decode().strip() or "?"
            finally:
                os.close(fd)
            raise BusyError("another vmsnap run (pid %s) holds %s; wait for it to finish"
                            % (holder, self.path)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"%d\n" % os.getpid(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
