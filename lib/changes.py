"""``DDSClient.changes``: a cursor over one partition's change stream (DESIGN §12).

The cursor reads pages from any active replica of the partition's RG.  It follows the
partition: a stale map (the partition moved) is repaired and the read goes to the new
RG; a replica that fails or dies is left for another one, to which the cursor's position
is translated by the brick (``bricks/changes.py``).  When the partition split or merged,
the page says ``ended`` and names the successors; each can be read from the position the
cursor reached (``changes(successor, cursor.position)``): the brick translates it.

Delivery is at least once: after a failover some changes may come again, and the stream
is compacted (a key written twice between two reads comes once, at its newest version).
Apply a change only if its version is newer than the one you hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred

from dds.changemsgs import MAX_PAGE, ReadChanges
from dds.changepos import BEGINNING, check_text
from dds.drmsgs import DrRead
from dds.errors import (ConnectionLost, DDSError, Divergence, InternalError, InvalidRequest,
                        NotServing, ProtocolError, ReplicaDamaged, StaleMap, Timeout,
                        Unavailable)
from dds.partition import PartitionId
from dds.rpc import RPCProtocol

from dds.lib.routing import Route, pick_replica

if TYPE_CHECKING:
    from dds.lib.client import DDSClient

#: A page that failed on one replica with one of these is asked of another (as a read).
_READ_RETRY = (NotServing, Timeout, ConnectionLost, Unavailable, ReplicaDamaged,
               InternalError)


@attrs.frozen
class Change:
    """One committed change: ``value`` None for a removal.  ``position``: resume here to
    get the changes after this one (a checkpoint)."""

    key: bytes
    value: bytes | None
    version: int
    position: str


@attrs.frozen
class ChangePage:
    """A page of changes, the position after it, and whether more were ready.  ``ended``:
    the partition split or merged into ``successors`` (read them from ``position``)."""

    changes: tuple[Change, ...]
    position: str
    more: bool
    ended: bool = False
    successors: tuple[str, ...] = ()


def check_partition(pid: Any) -> str:
    """The canonical text of a partition id, or ``InvalidRequest`` naming the problem."""
    try:
        return str(PartitionId.parse(pid))
    except (ValueError, TypeError) as e:
        raise InvalidRequest(f"changes: {e}") from None


class ChangeCursor:
    """Reads one partition's changes from ``position`` on (``beginning`` by default, or
    ``now``, or a position a change or page carried).  ``next_page()`` returns a
    Deferred; ``async for change in cursor`` follows the stream for ever (waiting
    ``poll_s`` when it is at the end) and stops when the partition has ended."""

    def __init__(self, client: DDSClient, partition: str, position: str | None = None,
                 *, limit: int = MAX_PAGE, timeout: float | None = None,
                 poll_s: float = 0.5) -> None:
        self.client = client
        self.partition = check_partition(partition)
        self.position = check_text(BEGINNING if position is None else position)
        if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"changes: limit must be 1..{MAX_PAGE}, got {limit!r}")
        self.limit = limit
        self.timeout = timeout if timeout is not None else client.timeout
        self.poll_s = poll_s
        #: Set once a page said the partition ended: its successors.
        self.ended: tuple[str, ...] | None = None
        #: The brick of the last page, and how it read the position (``exact``, ...).
        self.brick: str | None = None
        self.translated: str | None = None
        #: The DR follower's report, sent with every read as a ``DrRead``: (position of
        #: this partition's stream the DR site holds, the brick that made it; ``("",
        #: "")``: nothing yet).  None: a plain ``ReadChanges``.
        self.dr_applied: tuple[str, str] | None = None
        self._buffer: list[Change] = []

    def next_page(self) -> Deferred[ChangePage]:
        """The next page (possibly empty, at the end of the stream)."""
        return Deferred.fromCoroutine(self._next_page())

    async def _next_page(self) -> ChangePage:
        client = self.client
        deadline = client.clock.seconds() + self.timeout
        tried: set[str] = set()
        attempt = 0
        last: DDSError | None = None
        while True:
            route = await self._route(deadline)
            if route is None:
                ended = self._ended_page()
                if ended is not None:
                    return ended
                # Between two RGs (a move's cut-over): the map will route it again.
                attempt += 1
                await client._backoff(attempt, deadline, f"{self.partition} is active in "
                                      "no replica group of the map")
                continue
            # The replica of the last page while it serves: a position is exact on its
            # own file, translated (with some changes again) on another.
            brick = next((b for b in route.replicas
                          if b.id == self.brick and b.id not in tried), None)
            if brick is None:
                brick = pick_replica(route, tried, client.connections.open, client.rng)
            if brick is None:
                tried.clear()
                attempt += 1
                await client.maps.refresh()
                await client._backoff(attempt, deadline, f"no replica of {self.partition} "
                                      f"served its changes ({last.message if last else ''})")
                continue
            conn: RPCProtocol | None = None
            try:
                conn = await client._connect(brick.address, brick.port)
                msg = self._request(route)
                remaining = max(deadline - client.clock.seconds(), 0.001)
                reply = await conn.send(msg, timeout=remaining)
                return self._took(reply, brick.id)
            except Divergence:
                raise
            except StaleMap as e:
                attempt += 1
                await client._repair(e, conn, deadline)
            except InvalidRequest:
                raise
            except _READ_RETRY as e:     # not serving, damaged, gone: another replica
                last = e
                tried.add(brick.id)
                client.metrics.inc("changes_failovers_total")
                if client.clock.seconds() >= deadline:
                    raise Timeout(f"changes of {self.partition}: no replica answered "
                                  f"within {self.timeout:g}s: {e.message}") from None

    def _request(self, route: Route) -> ReadChanges:
        """A plain read, or the DR follower's (``dr_applied`` set): the same read that
        also reports what the DR site holds (DESIGN §12, ``dds.drmsgs``)."""
        if self.dr_applied is None:
            return ReadChanges(route.pid_text, route.rg.name, route.rg.version,
                               route.rg.fp, self.position, self.limit)
        applied, applied_by = self.dr_applied
        return DrRead(route.pid_text, route.rg.name, route.rg.version, route.rg.fp,
                      self.position, self.limit, applied=applied, applied_by=applied_by)

    async def _route(self, deadline: float) -> Route | None:
        """The partition's route under the map (refreshed once if the map lacks it);
        None if it is no longer active anywhere."""
        client = self.client
        pid = PartitionId.parse(self.partition)
        for attempt in range(2):
            cmap = client.maps.map
            rg = cmap.partition_rg.get(pid)
            if rg is not None:
                missing = [b for b in rg.active_members if b not in cmap.bricks]
                if not missing:
                    return Route(pid, rg, [cmap.bricks[b] for b in rg.active_members])
            if attempt == 0:
                await client.maps.refresh()
        return None

    def _ended_page(self) -> ChangePage | None:
        """The partition split or merged: its successors, from the map (None: no active
        partition holds its keys now, as in a move's cut-over)."""
        pid = PartitionId.parse(self.partition)
        active = self.client.maps.map.partition_rg
        successors = tuple(sorted(str(p) for p in active
                                  if pid.covers(p) or p.covers(pid)))
        if not successors:
            return None
        self.ended = successors
        return ChangePage((), self.position, False, True, successors)

    def _took(self, reply: Any, brick: str) -> ChangePage:
        try:
            changes = tuple(Change(k, v, ver, pos) for k, v, ver, pos in reply["changes"])
            if not all(type(c.key) is bytes and type(c.version) is int
                       and type(c.position) is str and (c.value is None
                                                        or type(c.value) is bytes)
                       for c in changes) or type(reply["position"]) is not str:
                raise TypeError("a change is not [bytes, bytes|None, int, str]")
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"changes reply from {brick} is malformed: {e}") from None
        self.brick = brick
        self.translated = reply.get("translated")
        if reply.get("ended"):
            self.ended = tuple(reply.get("successors") or ())
            return ChangePage((), self.position, False, True, self.ended)
        self.position = reply["position"]
        return ChangePage(changes, self.position, bool(reply.get("more")))

    # -- async iteration -----------------------------------------------------------------

    def __aiter__(self) -> ChangeCursor:
        return self

    async def __anext__(self) -> Change:
        while not self._buffer:
            if self.ended is not None:
                raise StopAsyncIteration
            page = await self.next_page()
            self._buffer.extend(page.changes)
            if not page.changes and not page.ended:
                d: Deferred[None] = Deferred()
                self.client.clock.callLater(self.poll_s, d.callback, None)
                await d
        return self._buffer.pop(0)


__all__ = ["Change", "ChangeCursor", "ChangePage", "check_partition"]
