"""Group commit at the DR site (``sitewriter.py``): the ``dr_apply`` requests for one DR
partition at one member go one at a time, and whatever the follower's partitions hand
in while one is in flight goes out together when it returns: one request, so one
transaction at the member, however many primary partitions' pages it carries.

Under load the batches grow by themselves (a busy member answers later, more waits);
idle, a page goes out at once.  Each caller waits for the request that carried its rows
and gets its outcome (a failure is every caller's failure: each one retries its own
rows, idempotent by version).  A lane is per route (partition, RG, its version and
fingerprint) and member, so rows routed by an older record never share a request with
rows routed by a newer one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from dds.records import BrickRecord

from dds.lib.routing import Route

__all__ = ["Lanes", "merge_marks"]

Row = tuple[bytes, "bytes | None", int]
Send = Callable[[Route, BrickRecord, list[Row], dict[str, list[Any]]], Awaitable[None]]
_Waiting = tuple[list[Row], dict[str, list[Any]], "Deferred[None]"]


def merge_marks(all_marks: Iterable[dict[str, list[Any]]]) -> dict[str, list[Any]]:
    """One marks dict: per primary partition the mark with the latest safe time."""
    out: dict[str, list[Any]] = {}
    for marks in all_marks:
        for pid, mark in marks.items():
            if pid not in out or out[pid][1] < mark[1]:
                out[pid] = mark
    return out


class Lanes:
    def __init__(self, send: Send) -> None:
        self.send = send
        #: Busy lanes, each with the requests waiting for the one in flight.
        self._lanes: dict[tuple[str, str, int, int, str], list[_Waiting]] = {}
        #: Requests sent, and callers' hand-ins they carried (for the metrics/tests).
        self.sent = 0
        self.carried = 0

    def submit(self, route: Route, brick: BrickRecord, rows: list[Row],
               marks: dict[str, list[Any]]) -> Deferred[None]:
        """Fires once a request carrying ``rows`` and ``marks`` was answered."""
        key = (route.pid_text, route.rg.name, route.rg.version, route.rg.fp, brick.id)
        d: Deferred[None] = Deferred()
        waiting = self._lanes.get(key)
        if waiting is not None:
            waiting.append((rows, marks, d))
        else:
            self._lanes[key] = []
            self._go(key, route, brick, [(rows, marks, d)])
        return d

    def _go(self, key: tuple[str, str, int, int, str], route: Route, brick: BrickRecord,
            batch: list[_Waiting]) -> None:
        rows = [row for part, _m, _d in batch for row in part]
        self.sent += 1
        self.carried += len(batch)
        sent = Deferred.fromCoroutine(self._send(route, brick, rows,
                                                 merge_marks(m for _r, m, _d in batch)))

        def done(result: Any) -> None:
            for _r, _m, d in batch:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(None)
            waiting = self._lanes.get(key)
            if waiting:
                self._lanes[key] = []
                self._go(key, route, brick, waiting)
            else:
                self._lanes.pop(key, None)
        sent.addBoth(done)

    async def _send(self, route: Route, brick: BrickRecord, rows: list[Row],
                    marks: dict[str, list[Any]]) -> None:
        await self.send(route, brick, rows, marks)
