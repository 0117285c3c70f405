"""Log lines at a bounded rate.

A stranger can make a brick fail a thousand handshakes a second; each failure is counted
in metrics, but only a few a window are logged, and the next line logged says how many
were left out.  So a flood costs a bounded amount of log.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

__all__ = ["LogLimiter"]


class LogLimiter:
    """At most ``per_window`` lines every ``window_s`` seconds through ``log.warn``."""

    def __init__(self, clock: IReactorTime, log: Logger, per_window: int = 10,
                 window_s: float = 10.0) -> None:
        self.clock = clock
        self.log = log
        self.per_window = per_window
        self.window_s = window_s
        self._window_start = float("-inf")
        self._logged = 0
        #: Lines left out since the last one logged.
        self.suppressed = 0

    def allow(self) -> bool:
        now = self.clock.seconds()
        if now - self._window_start >= self.window_s:
            self._window_start = now
            self._logged = 0
        if self._logged < self.per_window:
            self._logged += 1
            return True
        self.suppressed += 1
        return False

    def warn(self, fmt: str, **fields: Any) -> None:
        """``log.warn(fmt, **fields)`` if the rate allows; the count of lines left out
        before it rides along as ``suppressed``."""
        self._emit(self.log.warn, fmt, fields)

    def error(self, fmt: str, **fields: Any) -> None:
        """``log.error``, as ``warn``."""
        self._emit(self.log.error, fmt, fields)

    def _emit(self, emit: Any, fmt: str, fields: dict[str, Any]) -> None:
        if not self.allow():
            return
        suppressed, self.suppressed = self.suppressed, 0
        if suppressed:
            fmt += " ({suppressed} similar lines suppressed)"
        emit(fmt, suppressed=suppressed, **fields)
