"""The voter's side of an RG record change (DESIGN §5): the durable vote locks and the
vote itself.

A voter votes YES for exactly the record the change's kind makes from its own
(``bricks/rgtransitions.py``), and holds one lock per record from its YES vote until it
learns the outcome.  The lock is durable (``record_locks.msgpack``): a voter that
restarts while it holds one must not vote for a conflicting change.  It is released by
the coordinator's decision, by asking the coordinator (``record_state``), or as soon as
this brick holds the record at a later version by any route (gossip): then no change
from the old version can commit here anyway.

Before voting to exclude a member, a voter checks the suspect itself (a suspect it can
reach is not excluded, unless it answers that its disk is full: it cannot take writes,
and asks for its own exclusion, ``bricks/diskspace.py``), stops granting it leases, and
waits until its own last grant to it has expired (DESIGN §6): so an excluded brick has
stopped serving before anyone writes without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import attrs
import msgpack
from twisted.internet import defer
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from dds.deferreds import sleep
from dds.errors import DDSError, Divergence, InvalidRequest, Refused, StaleMap
from dds.maps import ClusterMap
from dds.messages import Message, Ping, RecordDecide, RecordPrepare, RecordState
from dds.records import Record, RGRecord, record_from_wire
from dds.rpc import RPCProtocol

from dds.bricks.atomicfile import replace_file
from dds.bricks.context import BrickContext, Peer
from dds.bricks.leases import Leases
from dds.bricks.rgtransitions import added, check_partitions, member_state, removed

LOCK_FILE = "record_locks.msgpack"
#: A voter still holding a lock this long after its vote asks the coordinator.
ASK_AFTER_S = 3.0

ChangeId = tuple[int, int]
#: Changes during whose vote the member concerned gets no new lease grant.
_BLOCKING = ("excluded", "removed")
#: ``remember(new, change, coordinator)``: a change adopted here, for the history.
Remember = Callable[[RGRecord, "VoteLock", str], None]


@attrs.frozen
class VoteLock:
    """The record lock a voter holds from its YES vote until it learns the outcome."""

    rg: str
    change: ChangeId
    coordinator: str
    old_version: int
    member: str
    state: str
    reason: str = ""

    def to_wire(self) -> list[Any]:
        return [self.rg, list(self.change), self.coordinator, self.old_version,
                self.member, self.state, self.reason]

    @classmethod
    def from_wire(cls, data: Any) -> "VoteLock":
        rg, change, coordinator, old_version, member, state, reason = data
        return cls(rg, (int(change[0]), int(change[1])), coordinator, int(old_version),
                   member, state, str(reason))


async def call(peer: Peer, brick: str, msg: Message, timeout: float) -> Any:
    """``msg`` to another brick, its reply."""
    conn = await peer(brick)
    return await conn.send(msg, timeout=timeout)


class RecordVoter:
    log = Logger()

    def __init__(self, ctx: BrickContext, leases: Leases, *, suspect_check_s: float,
                 remember: Remember) -> None:
        self.id = ctx.id
        self.fsync = ctx.fsyncs      # the brick's durability mode is fsync (see atomicfile)
        self.maps = maps = ctx.maps
        self.leases = leases
        self.clock = ctx.clock
        self.peer = ctx.peer
        self.path = Path(ctx.data_dir) / LOCK_FILE
        self.metrics = ctx.metrics
        self.suspect_check_s = suspect_check_s
        #: A committed change learnt from its coordinator's decision (the history).
        self.remember = remember
        self.locks: dict[str, VoteLock] = {}
        self._ask_timers: dict[str, IDelayedCall] = {}
        self._load_locks()
        maps.on_change(self._map_changed)

    # -- the durable vote locks --------------------------------------------------------

    def _load_locks(self) -> None:
        if not self.path.exists():
            return
        try:
            data = msgpack.unpackb(self.path.read_bytes(), raw=False)
            self.locks = {lock.rg: lock for lock in map(VoteLock.from_wire, data)}
        except (ValueError, TypeError, KeyError, msgpack.UnpackException) as e:
            # Written by atomic rename, so only an operator can have damaged it.  Voting
            # on with a lost lock could let two changes commit: refuse to start.
            raise RuntimeError(f"unreadable record lock file {self.path}: {e}; it holds "
                               "this brick's votes on RG record changes") from None
        for lock in self.locks.values():
            if lock.state in _BLOCKING:
                self.leases.block(lock.member, lock.rg)
            self.log.warn("restored the lock of {rg} from change {change} by {coordinator}; "
                          "asking it for the outcome", rg=lock.rg, change=lock.change,
                          coordinator=lock.coordinator)
            self._ask_later(lock, 0.5)
        self._release_moved()

    def _save_locks(self) -> None:
        replace_file(self.path, msgpack.packb([lock.to_wire() for lock in self.locks.values()],
                                              use_bin_type=True), fsync=self.fsync)

    def _take(self, lock: VoteLock) -> None:
        self.locks[lock.rg] = lock
        self._save_locks()

    def _release(self, rg: str, why: str) -> None:
        lock = self.locks.pop(rg, None)
        if lock is None:
            return
        self._save_locks()
        timer = self._ask_timers.pop(rg, None)
        if timer is not None and timer.active():
            timer.cancel()
        if lock.state in _BLOCKING:
            self.leases.unblock(lock.member, rg)
        self.log.info("released the lock of {rg} (change {change}): {why}", rg=rg,
                      change=lock.change, why=why)

    def _map_changed(self, new_map: ClusterMap, adopted: tuple[Record, ...]) -> None:
        self._release_moved()

    def _release_moved(self) -> None:
        """A lock on version v is moot once this brick holds the record past v."""
        for rg, lock in list(self.locks.items()):
            rec = self.maps.map.rgs.get(rg)
            if rec is not None and rec.version > lock.old_version:
                self._release(rg, f"{rg} is at version {rec.version} now")

    # -- the vote ----------------------------------------------------------------------

    async def prepare(self, msg: RecordPrepare) -> dict[str, Any]:
        try:
            new = record_from_wire(msg.record)
        except ValueError as e:
            raise InvalidRequest(f"record_prepare: {e}") from None
        if not isinstance(new, RGRecord):
            raise InvalidRequest("record_prepare: the proposed record is not an RG record")
        rg = new.name
        held = self.locks.get(rg)
        if held is not None and held.change == msg.change:
            return {}                                   # a repeated request
        rec = self.maps.map.rgs.get(rg)
        if rec is None:
            raise Refused(f"brick {self.id} knows no replica group {rg!r}")
        if rec.version != msg.old_version:
            if rec.version > msg.old_version:
                raise StaleMap(f"{rg} is at version {rec.version} here", rec.canonical())
            raise Refused(f"brick {self.id} holds {rg} at version {rec.version}, older than "
                          f"{msg.old_version}")
        if rec.fp != msg.old_fp:
            raise Divergence(f"{rg} v{rec.version}: fingerprint {rec.fp:#010x} here, "
                             f"{msg.old_fp:#010x} at the coordinator", rec.canonical())
        if self.id not in rec.active_members or (self.id == msg.member
                                                 and msg.state in ("excluded", "removed")):
            raise Refused(f"brick {self.id} is not a voting member of {rg}")
        try:
            if msg.state == "partitions":
                if new.members != rec.members or new.version != rec.version + 1:
                    raise ValueError("a partition change may change nothing else")
                check_partitions(self.maps, rec, new)
                expected = new
            elif msg.state == "added":
                expected = added(rec, msg.member, self.maps.map)
            elif msg.state == "removed":
                expected = removed(rec, msg.member)
            else:
                expected = rec.with_member_state(msg.member, member_state(msg.state))
        except ValueError as e:
            raise Refused(str(e)) from None
        if expected.fp != new.fp:
            raise Refused(f"the proposed {rg} v{new.version} is not {msg.member} "
                          f"{msg.state}")
        if held is not None:
            raise Refused(f"{rg} is locked here by change {held.change} of {held.coordinator}")
        lock = VoteLock(rg, msg.change, msg.coordinator, msg.old_version, msg.member,
                        msg.state, msg.reason)
        self._take(lock)
        try:
            if msg.state == "excluded":
                await self._ready_to_exclude(rg, msg.member)
            elif msg.state == "removed":
                # A member taken out must stop serving before anyone writes without it,
                # as for an exclusion (DESIGN §5, §6), but it is not a suspect.
                self.leases.block(msg.member, rg)
                await self._grant_expired(msg.member, rg)
            now = self.maps.map.rgs.get(rg)
            if now is None or now.version != msg.old_version:
                raise Refused(f"{rg} changed while voting")
        except Exception:
            if self.locks.get(rg) == lock:
                self._release(rg, "did not vote YES")
            raise
        self._ask_later(lock, ASK_AFTER_S)
        self.metrics.inc("record_votes_total")
        return {}

    async def _ready_to_exclude(self, rg: str, suspect: str) -> None:
        self.leases.block(suspect, rg)
        if await self._serves_writes(suspect):
            self.metrics.inc("exclusions_refused_alive_total")
            raise Refused(f"{suspect} answers {self.id}: not excluding it")
        await self._grant_expired(suspect, rg)

    async def _grant_expired(self, member: str, rg: str) -> None:
        """Until my last lease grant to ``member`` for ``rg`` has expired (new grants are
        blocked by the caller)."""
        wait = self.leases.grant_expiry(member, rg) - self.clock.seconds()
        if wait > 0:
            self.log.info("waiting {wait:.2f}s for my lease grant to {member} to expire",
                          wait=wait, member=member)
            await sleep(self.clock, wait)

    async def _serves_writes(self, brick: str) -> bool:
        """Whether ``brick`` answers a ping and does not say its disk is full."""
        try:
            connecting: Deferred[RPCProtocol] = Deferred.fromCoroutine(self._connect(brick))
            connecting.addTimeout(self.suspect_check_s, self.clock)
            conn = await connecting
            reply = await conn.send(Ping(), timeout=self.suspect_check_s)
        except (DDSError, defer.TimeoutError, defer.CancelledError):
            return False
        if isinstance(reply, dict) and reply.get("storage_full") is True:
            self.log.info("{brick} answers, but its disk is full: it can be excluded",
                          brick=brick)
            return False
        return True

    async def _connect(self, brick: str) -> RPCProtocol:
        return await self.peer(brick)

    def decide(self, msg: RecordDecide) -> dict[str, Any]:
        lock = next((lk for lk in self.locks.values() if lk.change == msg.change), None)
        if msg.commit and msg.record is not None:
            try:
                new = record_from_wire(msg.record)
            except ValueError as e:
                raise InvalidRequest(f"record_decide: {e}") from None
            result = self.maps.merge([new], source=f"record change {msg.change}")
            if isinstance(new, RGRecord) and result.adopted and lock is not None:
                self.remember(new, lock, lock.coordinator)
        if lock is not None and lock.rg in self.locks:
            self._release(lock.rg, "committed" if msg.commit else "aborted by its "
                          "coordinator")
        return {}

    def _ask_later(self, lock: VoteLock, after: float) -> None:
        old = self._ask_timers.pop(lock.rg, None)
        if old is not None and old.active():
            old.cancel()
        self._ask_timers[lock.rg] = self.clock.callLater(
            after, lambda: ensureDeferred(self._ask(lock)))

    async def _ask(self, lock: VoteLock) -> None:
        self._ask_timers.pop(lock.rg, None)
        if self.locks.get(lock.rg) != lock:
            return
        try:
            reply = await call(self.peer, lock.coordinator,
                               RecordState(change=lock.change, rg=lock.rg), 2.0)
        except DDSError as e:
            self.log.warn("lock of {rg} held for change {change}: its coordinator "
                          "{coordinator} does not answer ({error}); asking again",
                          rg=lock.rg, change=lock.change, coordinator=lock.coordinator,
                          error=e.message)
            self._ask_later(lock, ASK_AFTER_S)
            return
        if self.locks.get(lock.rg) != lock:
            return
        record = reply.get("record") if isinstance(reply, dict) else None
        if record is not None:
            try:
                self.maps.merge([record_from_wire(record)], source=f"coordinator {lock.coordinator}")
            except ValueError:
                pass
        state = reply.get("state") if isinstance(reply, dict) else None
        if state == "aborted" and lock.rg in self.locks:
            self._release(lock.rg, f"its coordinator {lock.coordinator} aborted it")
        elif lock.rg in self.locks:
            self._ask_later(lock, ASK_AFTER_S)


__all__ = ["ASK_AFTER_S", "LOCK_FILE", "RecordVoter", "VoteLock", "call"]
