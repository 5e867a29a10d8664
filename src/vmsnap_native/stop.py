"""Stop signals during a run: SIGINT (Ctrl-C), SIGTERM (systemctl stop),
SIGHUP (the terminal went away).  The first one stops the phase that runs
(Interrupted); the clean-up after it (thaw, thaw hooks, post-script) runs to
its end whatever comes next."""

from __future__ import annotations

import signal
import threading
from types import FrameType

TYPE_CHECKING = False   # true for type checkers; `typing` is not imported for it
if TYPE_CHECKING:
    from typing import Any, Literal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):
    """A stop signal, raised once where the run is (not an Exception: nothing
    on the way may swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.name = signal.Signals(signum).name


class StopSignals:
    """SIGINT/SIGTERM/SIGHUP while the cycle runs.  Armed, the first one
    raises Interrupted (which stops the phase that runs); disarmed (the
    clean-up: thaw, thaw hooks, post-script), a signal is only noted, so the
    clean-up runs to its end.  A signal the caller ignores (nohup) stays
    ignored; off the main thread (an embedding agent's) nothing is installed."""

    def __init__(self) -> None:
        self.received: str | None = None
        self.armed = True
        self._previous: dict[signal.Signals, Any] = {}   # the handlers put back on exit

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        return False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
            if self.armed:
                self.armed = False
                raise Interrupted(signum)

    def disarm(self) -> None:
        self.armed = False
