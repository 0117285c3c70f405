"""Structured log output for daemons and tools: one JSON object per line, or text.

Events keep their format fields (``log.info("excluded {brick}", brick=b)``), so the JSON
line carries ``brick`` as a field next to the rendered message: greppable and parseable.
Each line has its time twice: ``t`` (seconds since the epoch, for programs) and ``time``
(ISO 8601 in UTC, for people and log shippers).  A log file is reopened on request
(``LineObserver.reopen``; ``dds-brick`` does it on SIGHUP), so logrotate can move it away.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from typing import IO, Any

from twisted.logger import (FilteringLogObserver, ILogFilterPredicate, ILogObserver, LogLevel,
                            LogLevelFilterPredicate, PredicateResult, formatEvent,
                            globalLogBeginner)
from zope.interface import implementer

_SKIP = {"log_logger", "log_source", "log_format", "log_flattened", "log_trace",
         "log_io", "log_time", "log_level", "log_namespace", "log_text", "log_system",
         "log_failure", "failure", "message", "format", "isError", "time", "system",
         "log_legacy"}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def iso_time(t: float) -> str:
    """``2026-12-07T10:20:00.123456Z``."""
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")


@implementer(ILogObserver)
class LineObserver:
    def __init__(self, out: IO[str], fmt: str = "json", node: str = "",
                 path: str | None = None) -> None:
        self.out = out
        self.fmt = fmt
        self.node = node
        #: The file ``out`` was opened from, if any: what ``reopen`` opens again.
        self.path = path

    def reopen(self) -> None:
        """Open the log file again by its name (after logrotate moved it away); the old
        file is closed once the new one is open.  A failure keeps the old file."""
        if self.path is None:
            return
        new = open_log(self.path)
        old, self.out = self.out, new
        old.close()

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level", LogLevel.info)
        text = formatEvent(event)
        failure = event.get("log_failure")
        t = event.get("log_time", time.time())
        if self.fmt == "json":
            line: dict[str, Any] = {
                "t": round(t, 6), "time": iso_time(t), "level": level.name,
                "node": self.node,
                "ns": event.get("log_namespace", ""), "msg": text}
            for k, v in event.items():
                if k not in _SKIP and not k.startswith("log_"):
                    line[k] = _jsonable(v)
            if failure is not None:
                line["traceback"] = failure.getTraceback()
            self.out.write(json.dumps(line) + "\n")
        else:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
            self.out.write(f"{stamp} [{level.name:5}] {event.get('log_namespace', '')}: "
                           f"{text}\n")
            if failure is not None:
                self.out.write(failure.getTraceback())
        self.out.flush()


@implementer(ILogFilterPredicate)
class _NoFactoryChatter:
    """Twisted logs every client connection's factory start and stop at info level: one
    pair per peer connection, noise for an operator."""

    def __call__(self, event: dict[str, Any]) -> Any:
        fmt = event.get("log_format") or ""
        if fmt.startswith(("Starting factory", "Stopping factory")):
            return PredicateResult.no
        return PredicateResult.maybe


def open_log(path: str) -> IO[str]:
    """The log file, for appending; OSError (with the reason) if it cannot be opened."""
    return open(path, "a", encoding="utf-8")


def make_observer(level: str = "info", fmt: str = "json", file: str | None = None,
                  node: str = "") -> tuple[FilteringLogObserver, LineObserver]:
    """The brick's log observer as ``[log]`` says (``level``, ``fmt``, ``file`` or
    standard output), and its line writer, whose ``reopen`` a SIGHUP handler calls.
    OSError if the file cannot be opened.  ``dds-brick`` starts logging with it; under
    ``twistd`` it is the application's observer (``dds.bricks.tap``)."""
    out: IO[str] = open_log(file) if file else sys.stdout
    lines = LineObserver(out, fmt, node, path=file)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    return FilteringLogObserver(lines, [predicate, _NoFactoryChatter()]), lines


def start_logging(level: str = "info", fmt: str = "json", file: str | None = None,
                  node: str = "") -> LineObserver:
    """Log to ``file`` (or standard output); the observer, whose ``reopen`` a SIGHUP
    handler calls.  OSError if the file cannot be opened."""
    observer, lines = make_observer(level, fmt, file, node)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    return lines
