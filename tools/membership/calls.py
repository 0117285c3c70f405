"""The admin tool's handle on the cluster while a membership plan runs: brick addresses,
the newest records it has seen, and the requests of the steps (``rg_update`` by the
majority 2PC, ``map_push``, partition sizes)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import DeferredSemaphore

from dds.errors import DDSError, Refused, StaleMap
from dds.maps import ClusterMap
from dds.messages import MapPush, Message, RangeChecksums, RGStatus, RGUpdate
from dds.records import Record, RGRecord, record_from_wire
from dds.replies import RGStatusReply, StatusReply

from dds.tools.cluster import BrickCaller, Target, describe_error, gather
from dds.tools.runner import AdminError, pause

__all__ = ["Cluster", "partition_sizes", "CALL_TIMEOUT_S", "UPDATE_TIMEOUT_S",
           "SIZE_TIMEOUT_S", "UPDATE_ATTEMPTS"]

#: Seconds for one ordinary request.
CALL_TIMEOUT_S = 10.0
#: An ``rg_update`` waits for the majority 2PC (votes may wait for a lease to lapse).
UPDATE_TIMEOUT_S = 30.0
#: A partition scan for its size may take a while on a large partition.
SIZE_TIMEOUT_S = 120.0
UPDATE_ATTEMPTS = 12


class Cluster:
    """The admin tool's handle on the cluster while a plan runs: addresses, the newest
    records it has seen, and the requests of the steps."""

    def __init__(self, reactor: Any, target: Target, cmap: ClusterMap,
                 addresses: Mapping[str, tuple[str, int]] | None = None) -> None:
        self.reactor = reactor
        self.target = target
        self.map = cmap
        self.addresses: dict[str, tuple[str, int]] = {
            b.id: (b.address, b.port) for b in cmap.bricks.values()}
        self.addresses.update(addresses or {})
        self.down: dict[str, str] = {}
        #: A connection per request: the bricks restart under a long job.
        self.bricks = BrickCaller(reactor, target, self.addresses, timeout=CALL_TIMEOUT_S,
                                  reuse=False)

    async def send(self, brick: str, msg: Message,
                   timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        return await self.bricks.send(brick, msg, timeout)

    async def status(self, brick: str, timeout: float = CALL_TIMEOUT_S) -> StatusReply:
        return await self.bricks.status(brick, timeout)

    def learn(self, records: Iterable[Record]) -> None:
        self.map = self.map.merge(records).map
        for b in self.map.bricks.values():
            self.addresses.setdefault(b.id, (b.address, b.port))

    async def probe(self, bricks: Iterable[str] | None = None) -> set[str]:
        """The bricks (of the map by default) that answer ``status``; the others are in
        ``down`` with the reason."""
        ids = sorted(self.addresses if bricks is None else bricks)
        replies = await gather(self.status(b, 5.0) for b in ids)
        up = set()
        for b, r in zip(ids, replies):
            if isinstance(r, BaseException):
                self.down[b] = describe_error(r)
            else:
                up.add(b)
                self.down.pop(b, None)
        return up

    async def record(self, rg: str, also: Iterable[str] = ()) -> RGRecord:
        """The newest record of ``rg`` among its members (and ``also``)."""
        rec = await self.lookup(rg, also)
        if rec is None:
            raise AdminError(f"no brick knows replica group {rg}")
        return rec

    async def lookup(self, rg: str, also: Iterable[str] = ()) -> RGRecord | None:
        """:meth:`record`, or None if no brick asked knows ``rg``."""
        known = self.map.rgs.get(rg)
        ask = sorted({*(m.brick for m in known.members), *also} if known else set(also))
        ask = [b for b in ask if b in self.addresses]
        replies = await gather(self._rg_status(b, rg) for b in ask)
        found = []
        for r in replies:
            if isinstance(r, BaseException) or r.record is None:
                continue
            try:
                found.append(record_from_wire(r.record))
            except ValueError:
                continue
        self.learn(found)
        return self.map.rgs.get(rg)

    async def _rg_status(self, brick: str, rg: str) -> RGStatusReply:
        return RGStatusReply.from_wire(await self.send(brick, RGStatus(rg=rg), 5.0))

    async def push(self, records: Sequence[Record], bricks: Iterable[str] | None = None
                   ) -> dict[str, BaseException | dict[str, Any]]:
        """``map_push`` (best effort; gossip spreads records anyway, this is faster)."""
        ids = sorted(self.addresses if bricks is None else bricks)
        ids = [b for b in ids if b not in self.down]
        msg = MapPush(records=[r.canonical() for r in records])
        replies = await gather(self.send(b, msg, 5.0) for b in ids)
        return dict(zip(ids, replies))

    async def rg_update(self, rg: str, *, add: str | None = None,
                        remove: str | None = None, reason: str) -> RGRecord:
        """Add or remove one member of ``rg`` by the majority 2PC (DESIGN §5), retrying
        while the record moves under us.  Already so: nothing to do."""
        member = add or remove
        assert member is not None and (add is None) != (remove is None)
        errors: list[str] = []
        for attempt in range(UPDATE_ATTEMPTS):
            rec = await self.record(rg, [member])
            state = rec.member_state(member)
            if (add and state is not None) or (remove and state is None):
                return rec
            update = RGUpdate(rg=rg, version=rec.version, fp=rec.fp, reason=reason,
                              add_member=add, remove_member=remove)
            coordinators = [b for b in rec.active_members if b != member] or \
                list(rec.active_members)
            for coordinator in coordinators:
                try:
                    reply = await self.send(coordinator, update, UPDATE_TIMEOUT_S)
                    new = record_from_wire(reply["record"])
                    assert isinstance(new, RGRecord)
                    self.learn([new])
                    await self.push([new])
                    return new
                except (StaleMap, Refused) as e:
                    errors.append(f"{coordinator}: {e.message}")
                    break           # the record moved, or its lock is held: look again
                except DDSError as e:
                    errors.append(f"{coordinator}: {describe_error(e)}")
            await pause(self.reactor, min(0.2 * (attempt + 1), 2.0))
        what = f"adding {add} to" if add else f"removing {remove} from"
        raise AdminError(f"{what} {rg} failed after {UPDATE_ATTEMPTS} attempts",
                         *errors[-3:])


async def partition_sizes(cl: Cluster, up: set[str]) -> tuple[dict[str, int], list[str]]:
    """``{pid: key + value bytes}`` of every partition, from one active, reachable member
    of its RG (a scan in the brick's thread pool), and what could not be measured."""
    jobs: list[tuple[str, list[str]]] = []
    for rec in cl.map.rgs.values():
        for e in rec.partitions:
            if e.state == "active":
                jobs.append((str(e.pid), [b for b in rec.active_members if b in up]))
    sem = DeferredSemaphore(4)
    missing: list[str] = []

    async def one(pid: str, members: list[str]) -> int | None:
        for b in members:
            try:
                reply = await cl.send(b, RangeChecksums(pid=pid, buckets=1), SIZE_TIMEOUT_S)
                return int(reply.get("bytes", 0))
            except (DDSError, AdminError):
                continue
        return None
    results = await gather(sem.run(one, p, m) for p, m in jobs)
    sizes: dict[str, int] = {}
    for (pid, _), r in zip(jobs, results):
        if isinstance(r, int):
            sizes[pid] = r
        else:
            missing.append(pid)
    if missing and sizes:                   # unknown: as large as the average known one
        avg = sum(sizes.values()) // len(sizes)
        for pid in missing:
            sizes[pid] = avg
    return sizes, missing

