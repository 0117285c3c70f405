"""The brick's map requests and gossip (DESIGN §2): ``map_get``, ``map_push`` (a
library's push is a hint), ``gossip``, and the rounds this brick starts itself.

Every ``gossip_interval_ms`` the brick exchanges digests with one random peer (a seed
while its map names no other brick): it pulls the records the peer has newer and pushes
the ones the peer wants.  A record that does not decode refuses the whole lot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from dds.connect import ConnectionCache
from dds.errors import DDSError, InvalidRequest, Refused
from dds.messages import Gossip, MapGet, MapPush, Message
from dds.ratelimit import LogLimiter
from dds.records import Record, record_from_wire

from dds.bricks.context import BrickContext


class MapGossip:
    log = Logger()

    def __init__(self, ctx: BrickContext, peers: ConnectionCache, seeds: Sequence[str],
                 interval_s: float, denials: LogLimiter) -> None:
        self.id = ctx.id
        self.maps = ctx.maps
        self.metrics = ctx.metrics
        self.rng = ctx.rng
        self.peers = peers
        self.seeds = seeds
        self.interval_s = interval_s
        #: Refusals are logged at a bounded rate, shared with the brick's other refusals.
        self.denials = denials
        self._stopping = False
        self._loop = LoopingCall(self._round)
        self._loop.clock = ctx.clock

    def handlers(self) -> dict[type[Message], Callable[[Any], Any]]:
        return {MapGet: self.map_get, MapPush: self.map_push, Gossip: self.gossip}

    def start(self) -> None:
        self._loop.start(self.interval_s, now=False)

    def stop(self) -> None:
        self._stopping = True
        if self._loop.running:
            self._loop.stop()

    def map_get(self, msg: MapGet) -> dict[str, Any]:
        return {"map": self.maps.map.to_wire()}

    def _decode_records(self, items: list[Any], source: str) -> list[Record]:
        """The records of a push or a gossip reply; one that does not decode (a version
        out of range, a bad field) refuses the whole lot, counted as a refused record."""
        try:
            return [record_from_wire(r) for r in items]
        except ValueError as e:
            self.metrics.inc("map_records_refused_total")
            self.denials.warn("refused map records from {source}: {error}", source=source,
                              error=str(e))
            raise InvalidRequest(str(e)) from None

    def map_push(self, msg: MapPush) -> dict[str, Any]:
        result = self.maps.merge(self._decode_records(msg.records, "push"), source="push")
        if result.refused:
            problems = "; ".join(f"{r.record_id} at version {r.version}: {problem}"
                                 for r, problem in result.refused)
            adopted = "".join(f" (adopted {r.record_id}@{r.version})" for r in result.adopted)
            raise Refused(f"brick {self.id} refuses {problems}{adopted}")
        return {"adopted": len(result.adopted),
                "conflicts": [c.mine.record_id for c in result.conflicts]}

    def map_hint(self, msg: MapPush) -> dict[str, Any]:
        """A library's push (DESIGN §2: it has a newer record than this brick).  Records a
        client sends are not trusted (DESIGN §10): the brick asks the members of the RGs
        they name, as its own map knows them, for what they hold, now rather than at the
        next gossip round."""
        named = {r[1] for r in msg.records[:64]
                 if isinstance(r, list) and len(r) > 1 and r[0] == "rg"}
        peers = {m.brick for name, rg in self.maps.map.rgs.items() if name in named
                 for m in rg.members if m.brick != self.id}
        if not self._stopping:
            for peer in sorted(peers)[:16]:
                rec = self.maps.map.bricks.get(peer)
                if rec is not None:
                    ensureDeferred(self._with(rec.address, rec.port))
            if not peers:
                ensureDeferred(self._round())
        return {"adopted": 0, "conflicts": [], "hint": True}

    def gossip(self, msg: Gossip) -> dict[str, Any]:
        try:
            digest = [(str(r), int(v), int(f)) for r, v, f in msg.digest]
        except (TypeError, ValueError) as e:
            raise InvalidRequest(f"gossip: malformed digest: {e}") from None
        send, want = self.maps.map.newer_than(digest)
        return {"records": [r.canonical() for r in send], "want": want}

    async def _round(self) -> None:
        """Exchange digests with one random peer; pull what it has newer, push ours."""
        peers = [b for b in self.maps.map.bricks.values() if b.id != self.id]
        seeds = [s for s in self.seeds]
        if not peers and not seeds:
            return
        if peers:
            rec = self.rng.choice(peers)
            await self._with(rec.address, rec.port)
        else:
            host, _, port = self.rng.choice(seeds).rpartition(":")
            await self._with(host.strip("[]"), int(port))

    async def _with(self, host: str, port: int) -> None:
        """One gossip exchange: pull what the peer has newer, push ours."""
        try:
            conn = await self.peers.get(host, port)
            reply = await conn.send(Gossip(digest=[list(d) for d in self.maps.map.digest]),
                                    timeout=5.0)
            records = self._decode_records(reply.get("records", []),
                                           f"gossip:{conn.peer_id}")
            if records:
                self.maps.merge(records, source=f"gossip:{conn.peer_id}")
            want = set(reply.get("want", []))
            if want:
                push = [r.canonical() for r in self.maps.map if r.record_id in want]
                await conn.send(MapPush(records=push), timeout=5.0)
            self.metrics.inc("gossip_rounds_total")
        except DDSError as e:
            self.metrics.inc("gossip_failures_total")
            self.log.debug("gossip round failed: {error}", error=e.message)


__all__ = ["MapGossip"]
