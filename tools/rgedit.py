"""Changing RG records from dds-admin (DESIGN §5, §8): the part every reorganization
shares.  ``RecordEditor`` finds the newest record of an RG any brick holds, changes its
partitions by the majority 2PC (``rg_update``), retrying while the record moves under
it, and spreads the new record at once instead of waiting for gossip.

With ``reuse``, an editor keeps one connection per brick until ``close``: a move makes
some twenty requests while writes are paused, and a new connection costs a handshake of
three messages each time.  A connection found closed is opened again before a request is
sent; a request whose connection breaks fails, as one on a new connection would.  Without
it, every request has a connection of its own."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredList

from dds.errors import DDSError, Refused, StaleMap
from dds.messages import MapPush, Message, RGStatus, RGUpdate
from dds.records import RGRecord, record_from_wire
from dds.replies import RGStatusReply
from dds.tools.cluster import BrickCaller, Target, describe_error
from dds.tools.runner import AdminError, pause

Say = Callable[[str], None]
#: ``change(record, attempt)``: the new partition list, or None if it is already so.
Change = Callable[[RGRecord, int], "list[list[str]] | None"]
#: Each request's deadline (an ``rg_update`` waits for the majority 2PC); connecting:
#: the admin tool's policy (``tools/cluster.py``).
CALL_TIMEOUT_S = 30.0
ATTEMPTS = 20


class RecordEditor:
    def __init__(self, reactor: Any, target: Target,
                 addresses: dict[str, tuple[str, int]], say: Say, *,
                 reuse: bool = False) -> None:
        self.reactor = reactor
        self.target = target
        self.addresses = addresses
        self.say = say
        self.bricks = BrickCaller(reactor, target, addresses, timeout=CALL_TIMEOUT_S, reuse=reuse)
        #: Pushes not waited for (``update(wait_push=...)``), awaited by ``close``.
        self._background: list[Deferred[Any]] = []

    async def send(self, brick: str, msg: Message,
                   timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        return await self.bricks.send(brick, msg, timeout)

    async def close(self) -> None:
        """Wait for the pushes still going on, then close every connection."""
        background, self._background = self._background, []
        if background:
            await DeferredList(background, consumeErrors=True)
        self.bricks.close()

    async def record(self, rg: str) -> RGRecord:
        """The newest record of ``rg`` any brick holds."""
        replies = await DeferredList(
            [Deferred.fromCoroutine(self._rg_status(b, rg)) for b in self.addresses],
            consumeErrors=True)
        best: RGRecord | None = None
        for ok, reply in replies:
            if not ok or reply.record is None:
                continue
            rec = record_from_wire(reply.record)
            if isinstance(rec, RGRecord) and (best is None or rec.version > best.version):
                best = rec
        if best is None:
            raise AdminError(f"no brick answers with a record of {rg}")
        return best

    async def _rg_status(self, brick: str, rg: str) -> RGStatusReply:
        return RGStatusReply.from_wire(await self.send(brick, RGStatus(rg=rg), 5.0))

    async def update(self, rg: str, change: Change, reason: str, *,
                     known: RGRecord | None = None,
                     wait_push: Collection[str] | None = None,
                     push: bool = True) -> RGRecord:
        """Apply ``change`` to ``rg``'s record by the majority 2PC, retrying while the
        record moves under us.  ``known``: the record as last seen, tried first without
        asking the bricks (a stale one costs one refused attempt).  ``wait_push``: the
        bricks that must hold the new record before this returns (default: all); the
        others get it in the background.  Without ``push`` the caller spreads it."""
        for attempt in range(ATTEMPTS):
            if known is not None and attempt == 0:
                rec = known
            else:
                rec = await self.record(rg)
            parts = change(rec, attempt)
            if parts is None:
                if rec is known:
                    continue        # check against the bricks' newest record
                return rec
            errors = []
            for coordinator in rec.active_members:
                try:
                    reply = await self.send(coordinator, RGUpdate(
                        rg=rg, version=rec.version, fp=rec.fp, partitions=parts,
                        reason=reason))
                    new = record_from_wire(reply["record"])
                    assert isinstance(new, RGRecord)
                    if push:
                        await self.push(new, wait_push)
                    return new
                except (StaleMap, Refused) as e:
                    errors.append(f"{coordinator}: {e.message}")
                    break
                except DDSError as e:
                    errors.append(f"{coordinator}: {describe_error(e)}")
            if rec is known:
                continue            # perhaps only our record was old: read it, no pause
            self.say(f"  {rg}: retrying the record change ({'; '.join(errors)})")
            await pause(self.reactor, min(0.1 * (attempt + 1), 1.0))
        raise AdminError(f"could not change {rg}: the record keeps moving or is refused")

    async def push(self, rec: RGRecord, wait: Collection[str] | None = None) -> None:
        """Spread a new record at once (gossip would, in a second or so).  Returns once
        the bricks in ``wait`` (default: all) answered; the rest go on in the
        background."""
        msg = MapPush(records=[rec.canonical()])
        now: list[Deferred[Any]] = []
        for b in self.addresses:
            d = Deferred.fromCoroutine(self.send(b, msg, 5.0))
            if wait is None or b in wait:
                now.append(d)
            else:
                d.addErrback(lambda _: None)
                self._background.append(d)
        await DeferredList(now, consumeErrors=True)
