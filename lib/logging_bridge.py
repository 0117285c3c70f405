"""The library's log events go to the standard ``logging`` module, never to Twisted's
global log.

A service that embeds the library decides what it sees of it through its own ``logging``
configuration (loggers named ``dds.lib.…``), the way it does for every other library.
Twisted's global log is the application's: before it calls ``beginLoggingTo``, Twisted
prints critical events (``log.failure``) to stderr, and under crochet (the blocking
client) every warning reaches stderr through Python's last-resort handler; a library that
called ``beginLoggingTo`` itself would take the application's choice away.  So the library
never touches the global log state: its ``Logger`` instances are given an observer of
their own (``observer=TO_LOGGING``), and events reach ``logging`` and nothing else.

Quiet by default: the ``dds`` logger has a ``NullHandler`` (the standard practice for a
library, see the ``logging`` HOWTO), so without a configuration nothing is printed.
"""

from __future__ import annotations

import logging
from typing import Any

from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, formatEvent
from zope.interface import implementer

#: Twisted's levels as ``logging``'s (``critical`` is what ``Logger.failure`` uses).
_LEVELS = {LogLevel.debug: logging.DEBUG, LogLevel.info: logging.INFO,
           LogLevel.warn: logging.WARNING, LogLevel.error: logging.ERROR,
           LogLevel.critical: logging.CRITICAL}

logging.getLogger("dds").addHandler(logging.NullHandler())


@implementer(ILogObserver)
class ToLogging:
    """Forwards each event to the ``logging`` logger named by its namespace (the emitting
    class, ``dds.lib.client.DDSClient`` say), with a traceback for ``log.failure``."""

    def __call__(self, event: LogEvent) -> None:
        name = event.get("log_namespace") or "dds.lib"
        if not name.startswith("dds"):     # every library event stays under "dds"
            name = f"dds.lib.{name}"
        logger = logging.getLogger(name)
        level = _LEVELS.get(event.get("log_level", LogLevel.info), logging.INFO)
        if not logger.isEnabledFor(level):
            return
        failure = event.get("log_failure")
        exc_info: Any = None
        if failure is not None:
            exc_info = (failure.type, failure.value, failure.getTracebackObject())
        logger.log(level, "%s", formatEvent(event), exc_info=exc_info)


#: The one observer every library logger uses.
TO_LOGGING = ToLogging()


def library_logger(owner: object) -> Logger:
    """A logger for ``owner`` (an object of a library class whose class-level ``Logger``
    would go to the global log) that goes to ``logging`` instead, under the class's
    name; assign it to ``owner.log``."""
    cls = type(owner)
    return Logger(f"{cls.__module__}.{cls.__name__}", owner, observer=TO_LOGGING)
