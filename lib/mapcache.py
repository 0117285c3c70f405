"""The library's map cache: fetch, repair on ``StaleMap``, and slow periodic refresh.

Nobody tells a library that the map changed (DESIGN §2, lazy replication).  It learns in
two ways: a brick answers ``StaleMap`` with its own record (adopt it if newer, or push ours
if the brick is behind), and a slow refresh.  Repair is per record, so a stale library
costs one extra round trip, not a map download.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any, Awaitable, Callable

from twisted.logger import Logger

from dds.errors import DDSError, Divergence, StaleMap, Unavailable
from dds.maps import ClusterMap
from dds.partition import PartitionId
from dds.messages import MapGet, MapPush
from dds.records import Record, RGRecord, record_from_wire
from dds.rpc import RPCProtocol

Connect = Callable[[str, int], Awaitable[RPCProtocol]]


def parse_seed(seed: str) -> tuple[str, int]:
    host, sep, port = seed.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"bad seed address {seed!r}: expected host:port")
    return host.strip("[]"), int(port)


class MapCache:
    log = Logger()

    def __init__(self, seeds: list[str], connect: Connect,
                 rng: random.Random | None = None) -> None:
        self.rng = rng if rng is not None else random.Random()
        self.seeds = [parse_seed(s) for s in seeds]
        if not self.seeds:
            raise ValueError("at least one seed address is needed")
        self.connect = connect
        self.map = ClusterMap()
        self.repairs = 0

    async def refresh(self, prefer: Sequence[str] = ()) -> ClusterMap:
        """Fetch the whole map from a brick: the bricks ``prefer`` names first (in that
        order), then the other known bricks, then the seeds."""
        known = self.map.bricks
        first = [(b.address, b.port) for b in (known.get(i) for i in prefer) if b is not None]
        others = [(b.address, b.port) for b in known.values()
                  if (b.address, b.port) not in first]
        self.rng.shuffle(others)
        candidates = first + others
        candidates += [s for s in self.seeds if s not in candidates]
        errors = []
        for host, port in candidates:
            try:
                conn = await self.connect(host, port)
                reply = await conn.send(MapGet(), timeout=5.0)
                fetched = ClusterMap.from_wire(reply["map"])
            except (DDSError, ValueError, KeyError, TypeError) as e:
                errors.append(f"{host}:{port}: {getattr(e, 'message', e)}")
                continue
            if len(fetched) == 0:
                errors.append(f"{host}:{port}: brick has no map yet (run dds-admin init)")
                continue
            self.adopt(list(fetched), source=f"{host}:{port}")
            return self.map
        raise Unavailable("could not fetch the cluster map: " + "; ".join(errors))

    def adopt(self, records: list[Record], source: str) -> int:
        result = self.map.merge(records)
        for c in result.conflicts:
            self.log.error("map divergence seen via {source}: {conflict}", source=source,
                           conflict=str(c))
        if result.adopted:
            candidate = result.map
            try:
                candidate.trie   # partitions must still tile the key space
            except ValueError:
                # A mid-reorganization mix of old and new records: keep the new records
                # anyway; routing falls back to a full refresh (see ``route_failed``).
                pass
            self.map = candidate
        return len(result.adopted)

    async def repair(self, error: StaleMap, conn: RPCProtocol) -> None:
        """Fix what made ``conn``'s brick answer ``StaleMap``; raise if nothing can."""
        self.repairs += 1
        if isinstance(error, Divergence):
            raise error
        if error.data is None:
            # The brick does not know the RG at all: it is behind; give it our map.
            await conn.send(MapPush(records=self.map.to_wire()), timeout=5.0)
            return
        try:
            theirs = record_from_wire(error.data)
        except ValueError:
            await self.refresh()
            return
        mine = self.map.get(theirs.record_id)
        if mine is not None and theirs.version == mine.version and theirs.fp != mine.fp:
            # Our record at the brick's version differs from the brick's: ours is a stale
            # or corrupted copy (bricks find real divergence among themselves, by gossip),
            # so take the brick's in place of ours -- ``merge`` would keep ours.
            self.log.warn("replacing {record} v{version} (fp {mine:#010x}) by the record "
                          "of {brick} (fp {theirs:#010x})", record=theirs.record_id,
                          version=theirs.version, mine=mine.fp, theirs=theirs.fp,
                          brick=conn.peer_id)
            self.map = ClusterMap({**self.map.records, theirs.record_id: theirs})
            await self._complete(theirs)
        elif mine is None or theirs.version > mine.version:
            self.adopt([theirs], source=f"stale-map from {conn.peer_id}")
            await self._complete(theirs)
        elif theirs.version < mine.version:
            await conn.send(MapPush(records=[mine.canonical()]), timeout=5.0)
        else:
            # Same version: either it changed meanwhile or the partition is elsewhere.
            await self.refresh()

    async def _complete(self, theirs: Record) -> None:
        """After taking a brick's record: fetch the whole map if the record needs records
        we lack (a brick we do not know, or partitions that no longer tile the keys),
        first from the members of an RG taking a partition ``theirs`` gives away."""
        try:
            self.map.trie
            missing = isinstance(theirs, RGRecord) and any(
                m.brick not in self.map.bricks for m in theirs.members)
        except ValueError:
            missing = True
        if missing:
            leaving = ([e.pid for e in theirs.partitions if e.state == "outgoing"]
                       if isinstance(theirs, RGRecord) else [])
            await self.refresh(prefer=self.takers(leaving))

    def takers(self, pids: Iterable[PartitionId]) -> list[str]:
        """The active members of every RG that lists one of ``pids`` incoming: in a move's
        cut-over (DESIGN §8) they hold the record that makes it active first (they vote
        on it), before gossip brings it to the other bricks."""
        wanted = set(pids)
        return [b for rec in self.map.rgs.values()
                if any(e.state == "incoming" and e.pid in wanted for e in rec.partitions)
                for b in rec.active_members]

    def known(self) -> dict[str, Any]:
        return {"records": len(self.map), "fp": self.map.fp, "repairs": self.repairs}
