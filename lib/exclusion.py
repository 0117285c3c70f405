"""Asking the members of an RG to exclude one the library cannot reach (DESIGN §4, §5).

Write-all means a dead member stops every write to its RG until it is excluded.  The
library that finds a member unreachable during a write asks another active member to
coordinate the exclusion; that member and the other voters check the suspect themselves,
wait out their lease grants to it, and change the record by majority.  The library then
routes by the new record.

Every library asks the *first* other active member of the record, so that concurrent
requests about one suspect meet at one coordinator, which runs the change once, instead
of racing for the record lock from different coordinators.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dds.errors import DDSError, Divergence, Refused, StaleMap
from dds.messages import RGChange
from dds.metrics import Metrics
from dds.records import BrickRecord, RGRecord, record_from_wire
from dds.rpc import RPCProtocol

from dds.lib.mapcache import MapCache
from dds.lib.routing import Route

Connect = Callable[[str, int], Awaitable[RPCProtocol]]

#: Longest one exclusion request may take: the voters wait out their grants (one lease)
#: and check the suspect; more than this and the deadline of the write decides.
EXCLUDE_TIMEOUT_S = 10.0


class Excluder:
    log = Logger()

    def __init__(self, connect: Connect, maps: MapCache, clock: IReactorTime,
                 metrics: Metrics) -> None:
        self.connect = connect
        self.maps = maps
        self.clock = clock
        self.metrics = metrics
        self._running: dict[tuple[str, str], list[Deferred[bool]]] = {}

    def excluded(self, rg_name: str, brick: str) -> bool:
        """Whether the current map no longer lists ``brick`` as active in ``rg_name``."""
        rec = self.maps.map.rgs.get(rg_name)
        return rec is not None and brick not in rec.active_members

    def left(self, route: Route, brick: BrickRecord) -> Deferred[bool]:
        """Whether ``brick`` is no longer an active member of ``route``'s RG, by a fresh
        map: a member removed by a reorganization (DESIGN §8) drops the transactions of
        the partitions it gave up, and its acknowledgement is no longer needed."""
        async def check() -> bool:
            try:
                await self.maps.refresh()
            except DDSError:
                return False
            return self.excluded(route.rg.name, brick.id)
        return Deferred.fromCoroutine(check())

    def exclude(self, route: Route, brick: BrickRecord, reason: str,
                deadline: float) -> Deferred[bool]:
        """True once the map routes ``route``'s RG without ``brick``.  One request per
        (RG, brick) at a time from this library; concurrent writes share it."""
        key = (route.rg.name, brick.id)
        if key in self._running:
            waiter: Deferred[bool] = Deferred()
            self._running[key].append(waiter)
            return waiter
        self._running[key] = []
        d = Deferred.fromCoroutine(self._exclude(route.rg, brick, reason, deadline))

        def done(result: object) -> object:
            for waiter in self._running.pop(key, []):
                waiter.callback(result is True)
            return result
        d.addBoth(done)
        return d

    async def _exclude(self, rg: RGRecord, brick: BrickRecord, reason: str,
                       deadline: float) -> bool:
        if self.excluded(rg.name, brick.id):
            return True
        current = self.maps.map.rgs.get(rg.name, rg)
        if current.version > rg.version:
            return brick.id not in current.active_members
        others = [b for b in rg.active_members if b != brick.id]
        self.metrics.inc("exclusions_requested_total")
        self.log.warn("asking {rg} to exclude {brick}: {reason}", rg=rg.name,
                      brick=brick.id, reason=reason)
        for coordinator in others:
            remaining = deadline - self.clock.seconds()
            if remaining <= 0:
                return False
            rec = self.maps.map.bricks.get(coordinator)
            if rec is None:
                continue
            try:
                conn = await self.connect(rec.address, rec.port)
                reply = await conn.send(RGChange(
                    rg=rg.name, version=rg.version, fp=rg.fp, member=brick.id,
                    state="excluded", reason=reason),
                    timeout=min(remaining, EXCLUDE_TIMEOUT_S))
                new = record_from_wire(reply["record"])
            except Divergence:
                raise
            except StaleMap as e:
                # The record moved on (maybe this very exclusion, by someone else).
                if e.data is not None:
                    try:
                        self.maps.adopt([record_from_wire(e.data)],
                                        source=f"rg_change by {coordinator}")
                    except ValueError:
                        pass
                return self.excluded(rg.name, brick.id)
            except Refused as e:
                self.metrics.inc("exclusions_refused_total")
                self.log.warn("{coordinator} refused to exclude {brick}: {error}",
                              coordinator=coordinator, brick=brick.id, error=e.message)
                return False
            except (DDSError, ValueError, KeyError, TypeError) as e:
                self.log.warn("exclusion of {brick} via {coordinator} failed: {error}",
                              brick=brick.id, coordinator=coordinator,
                              error=getattr(e, "message", repr(e)))
                continue
            self.maps.adopt([new], source=f"rg_change by {coordinator}")
            self.metrics.inc("exclusions_total")
            return self.excluded(rg.name, brick.id)
        return False
