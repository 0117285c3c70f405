"""The follower's writes into the DR site (DESIGN §12): rows routed by key through the DR
site's own map and sent with ``dr_apply`` to every active member of each DR partition's
replica group at once; done only when every one of them acknowledged (each reply means
the rows are durable there).

A failure is handled the way the library handles a write's: a stale map is refreshed
and the rows routed again (the DR site may split, merge or move partitions under the
follower); a member that cannot be reached is excluded by its RG (``lib/exclusion.py``:
the other members check it and change the record), after which the rows go to the
members left and the DR site's own recovery re-copies the excluded one; anything else
retryable (``Locked``, ``Recovering``, ``NotServing``, a full disk) is retried after a
backoff.  ``dr_apply`` is idempotent by version, so a retry resends to every member.  A
refusal no retry can cure (the site is no longer a follower, a malformed request, the
role) stops the follower (``FollowerStopped``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from dds.deferreds import gather, sleep
from dds.drmsgs import MAX_APPLY_ROWS, DrApply
from dds.errors import (AuthenticationFailed, DDSError, InvalidRequest, PermissionDenied,
                        ProtocolError, Refused, StaleMap)
from dds.metrics import Metrics
from dds.ratelimit import LogLimiter
from dds.records import BrickRecord

from dds.lib.client import DDSClient
from dds.lib.coordinator import UNREACHABLE
from dds.lib.exclusion import EXCLUDE_TIMEOUT_S
from dds.lib.routing import Route, Router
from dds.tools.dr.lanes import Lanes

__all__ = ["FollowerStopped", "SiteWriter", "Row", "chunks"]

Row = tuple[bytes, "bytes | None", int]
#: Errors after which retrying cannot help: the follower stops and says why.
_FATAL = (Refused, InvalidRequest, PermissionDenied, AuthenticationFailed, ProtocolError)
#: Bytes of keys and values in one ``dr_apply`` (well under the frame limit).
MAX_REQUEST_BYTES = 4 << 20
#: Seconds one ``dr_apply`` may take.
APPLY_TIMEOUT_S = 30.0
#: The longest pause between two attempts.
MAX_BACKOFF_S = 5.0


class FollowerStopped(Exception):
    """The follower cannot go on (the DR site was promoted or detached, a request was
    refused for good); ``str()`` says why."""


def chunks(rows: Sequence[Row], max_bytes: int = MAX_REQUEST_BYTES,
           max_rows: int = MAX_APPLY_ROWS) -> list[list[Row]]:
    """``rows`` in order, cut into requests of at most ``max_rows`` rows and about
    ``max_bytes`` bytes (a row larger than that goes alone)."""
    out: list[list[Row]] = []
    cur: list[Row] = []
    size = 0
    for row in rows:
        n = len(row[0]) + (len(row[1]) if row[1] is not None else 0) + 16
        if cur and (len(cur) == max_rows or size + n > max_bytes):
            out.append(cur)
            cur, size = [], 0
        cur.append(row)
        size += n
    if cur:
        out.append(cur)
    return out


def group(router: Router, client: DDSClient, rows: Sequence[Row]
          ) -> list[tuple[Route, list[Row]]]:
    """``rows`` by the DR partition their key belongs to, under the DR site's map
    (``LookupError`` while it cannot route one: a move's cut-over)."""
    groups: dict[str, tuple[Route, list[Row]]] = {}
    cmap = client.maps.map
    for row in rows:
        route = router.route(cmap, row[0])
        groups.setdefault(route.pid_text, (route, []))[1].append(row)
    return list(groups.values())


class SiteWriter:
    log = Logger()

    def __init__(self, client: DDSClient, metrics: Metrics,
                 stopping: Callable[[], bool]) -> None:
        self.client = client
        self.clock = client.clock
        self.metrics = metrics
        self.stopping = stopping
        self.router = Router()
        #: One request in flight per DR partition and member (``lanes.py``).
        self.lanes = Lanes(self._request)
        #: Failed attempts, a few lines a window (a DR site that is down fails each one).
        self._failures = LogLimiter(self.clock, self.log, per_window=5, window_s=10.0)

    async def apply(self, rows: Sequence[Row], marks: dict[str, list[Any]]) -> None:
        """Until every active DR replica the rows route to holds them (with ``marks``):
        retried for ever but on ``FollowerStopped`` (or once stopping)."""
        attempt = 0
        pending = list(rows)
        while True:
            if self.stopping():
                raise FollowerStopped("stopping")
            try:
                groups = group(self.router, self.client, pending)
            except (LookupError, ValueError) as e:
                failures: list[tuple[Route | None, BrickRecord | None, Exception]] = [
                    (None, None, LookupError(f"the DR map does not route a key: {e}"))]
                groups = []
            else:
                failures = await self._send(groups, marks)
            if not failures:
                return
            failed = {id(r) for r, _b, _e in failures}
            pending = [row for route, grows in groups if id(route) in failed
                       for row in grows] or pending
            attempt += 1
            await self._recover(failures, attempt)

    async def marks(self, marks: dict[str, list[Any]]) -> int:
        """``marks`` (no rows) to every active member of every DR partition, once: how
        far the follower has applied each primary partition, for the DR partitions no
        recent page touched.  Returns how many members failed (tried again next time)."""
        cmap = self.client.maps.map
        groups: list[tuple[Route, list[Row]]] = []
        for pid, rg in cmap.partition_rg.items():
            if all(b in cmap.bricks for b in rg.active_members):
                groups.append((Route(pid, rg, [cmap.bricks[b] for b in rg.active_members]),
                               []))
        failures = await self._send(groups, marks)
        for _route, _brick, error in failures:
            self._count(error)
        if any(isinstance(e, StaleMap) for _r, _b, e in failures):
            await self._refresh()
        return len(failures)

    async def _send(self, groups: list[tuple[Route, list[Row]]], marks: dict[str, list[Any]]
                    ) -> list[tuple[Route | None, BrickRecord | None, Exception]]:
        calls = [(route, brick) for route, _rows in groups for brick in route.replicas]
        rows_of = {id(route): grows for route, grows in groups}
        results = await gather(self._member(route, brick, rows_of[id(route)], marks)
                               for route, brick in calls)
        return [(route, brick, r) for (route, brick), r in zip(calls, results)
                if isinstance(r, Exception)]

    def _member(self, route: Route, brick: BrickRecord, rows: list[Row],
                marks: dict[str, list[Any]]) -> Deferred[None]:
        return self.lanes.submit(route, brick, rows, marks)

    async def _request(self, route: Route, brick: BrickRecord, rows: list[Row],
                       marks: dict[str, list[Any]]) -> None:
        """``rows`` and ``marks`` to one member: one ``dr_apply`` (more if they are many
        or large; the marks go with the last)."""
        conn = await self.client.connections.get(brick.address, brick.port)
        parts = chunks(rows) or [[]]
        rg = route.rg
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            self.metrics.inc("requests_total")
            await conn.send(DrApply(route.pid_text, rg.name, rg.version, rg.fp, part,
                                    marks if last else {}), timeout=APPLY_TIMEOUT_S)

    async def _recover(self, failures: list[tuple[Route | None, BrickRecord | None,
                                                  Exception]], attempt: int) -> None:
        """What the failures of one attempt call for, before the next one."""
        for route, brick, error in failures:
            self._count(error)
            if isinstance(error, _FATAL):
                where = f" (brick {brick.id})" if brick is not None else ""
                raise FollowerStopped(f"the DR site refused dr_apply{where}: "
                                      f"{getattr(error, 'message', error)}")
        unreachable = {(r.rg.name, b.id): (r, b, e) for r, b, e in failures
                       if r is not None and b is not None and isinstance(e, UNREACHABLE)}
        excluded = False
        for route, brick, error in unreachable.values():
            self.metrics.inc("exclusions_requested_total")
            self.log.warn("DR brick {brick} of {rg} does not answer ({error}): asking its "
                          "group to exclude it", brick=brick.id, rg=route.rg.name,
                          error=getattr(error, "message", str(error)))
            try:
                deadline = self.clock.seconds() + EXCLUDE_TIMEOUT_S
                excluded |= bool(await self.client.excluder.exclude(
                    route, brick, f"DR follower: dr_apply failed: {error}", deadline))
            except DDSError as e:
                self.log.warn("exclusion of {brick} failed: {error}", brick=brick.id,
                              error=e.message)
        if not excluded:
            first = failures[0][2]
            self._failures.warn("dr_apply failed ({error}); attempt {attempt} in a moment",
                                error=getattr(first, "message", str(first)),
                                attempt=attempt + 1)
            await self._pause(attempt)
        await self._refresh()

    async def _refresh(self) -> None:
        try:
            await self.client.maps.refresh()
        except DDSError as e:
            self._count(e)
            self.log.warn("the DR site's map could not be refreshed: {error}",
                          error=e.message)

    async def _pause(self, attempt: int) -> None:
        delay = min(MAX_BACKOFF_S, 0.05 * (2 ** min(attempt, 8)))
        await sleep(self.clock, delay * (0.5 + self.client.rng.random()))

    def _count(self, error: BaseException) -> None:
        code = error.code if isinstance(error, DDSError) else "route"
        self.metrics.inc("errors_total", code=code)
