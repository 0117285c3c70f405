"""Structured log output for daemons and tools: one JSON object per line, or text.

Events keep their format fields (``log.info("excluded {brick}", brick=b)``), so the JSON
line carries ``brick`` as a field next to the rendered message: greppable and parseable.
"""

from __future__ import annotations

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


@implementer(ILogObserver)
class LineObserver:
    def __init__(self, out: IO[str], fmt: str = "json", node: str = "") -> None:
        self.out = out
        self.fmt = fmt
        self.node = node

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level", LogLevel.info)
        text = formatEvent(event)
        failure = event.get("log_failure")
        t = event.get("log_time", time.time())
        if self.fmt == "json":
            line: dict[str, Any] = {
                "t": round(t, 6), "level": level.name, "node": self.node,
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


def start_logging(level: str = "info", fmt: str = "json", file: str | None = None,
                  node: str = "") -> None:
    out: IO[str] = open(file, "a", encoding="utf-8") if file else sys.stdout
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    observer = FilteringLogObserver(LineObserver(out, fmt, node),
                                    [predicate, _NoFactoryChatter()])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
