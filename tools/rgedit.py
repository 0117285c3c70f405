"""Changing RG records from dds-admin (DESIGN §5, §8): the part every reorganization
shares.  ``RecordEditor`` finds the newest record of an RG any brick holds, changes its
partitions by the majority 2PC (``rg_update``), retrying while the record moves under
it, and spreads the new record at once instead of waiting for gossip."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredList

from dds.errors import DDSError, Refused, StaleMap
from dds.records import RGRecord, record_from_wire
from dds.tools.cluster import Target, call_brick, describe_error
from dds.tools.runner import AdminError, pause

Say = Callable[[str], None]
#: ``change(record, attempt)``: the new partition list, or None if it is already so.
Change = Callable[[RGRecord, int], "list[list[str]] | None"]
CALL_TIMEOUT_S = 30.0
ATTEMPTS = 20


class RecordEditor:
    def __init__(self, reactor: Any, target: Target,
                 addresses: dict[str, tuple[str, int]], say: Say) -> None:
        self.reactor = reactor
        self.target = target
        self.addresses = addresses
        self.say = say

    async def call(self, brick: str, mtype: str, body: dict[str, Any],
                   timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        if brick not in self.addresses:
            raise AdminError(f"brick {brick} is not in the map")
        host, port = self.addresses[brick]
        return await call_brick(self.reactor, host, port, self.target, mtype, body,
                                timeout=5.0, call_timeout=timeout)

    async def record(self, rg: str) -> RGRecord:
        """The newest record of ``rg`` any brick holds."""
        replies = await DeferredList(
            [Deferred.fromCoroutine(self.call(b, "rg_status", {"rg": rg}, 5.0))
             for b in self.addresses], consumeErrors=True)
        best: RGRecord | None = None
        for ok, reply in replies:
            if not ok or reply.get("record") is None:
                continue
            rec = record_from_wire(reply["record"])
            if isinstance(rec, RGRecord) and (best is None or rec.version > best.version):
                best = rec
        if best is None:
            raise AdminError(f"no brick answers with a record of {rg}")
        return best

    async def update(self, rg: str, change: Change, reason: str) -> RGRecord:
        """Apply ``change`` to ``rg``'s record by the majority 2PC, retrying while the
        record moves under us."""
        for attempt in range(ATTEMPTS):
            rec = await self.record(rg)
            parts = change(rec, attempt)
            if parts is None:
                return rec
            errors = []
            for coordinator in rec.active_members:
                try:
                    reply = await self.call(coordinator, "rg_update", {
                        "rg": rg, "version": rec.version, "fp": rec.fp,
                        "partitions": parts, "reason": reason})
                    new = record_from_wire(reply["record"])
                    assert isinstance(new, RGRecord)
                    await self.push(new)
                    return new
                except (StaleMap, Refused) as e:
                    errors.append(f"{coordinator}: {e.message}")
                    break
                except DDSError as e:
                    errors.append(f"{coordinator}: {describe_error(e)}")
            self.say(f"  {rg}: retrying the record change ({'; '.join(errors)})")
            await pause(self.reactor, min(0.1 * (attempt + 1), 1.0))
        raise AdminError(f"could not change {rg}: the record keeps moving or is refused")

    async def push(self, rec: RGRecord) -> None:
        """Spread a new record at once (gossip would, in a second or so)."""
        await DeferredList([Deferred.fromCoroutine(self.call(b, "map_push",
                                                             {"records": [rec.canonical()]},
                                                             5.0))
                            for b in self.addresses], consumeErrors=True)
