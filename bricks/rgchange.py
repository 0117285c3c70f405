"""Changes of RG records by majority 2PC with a record lock (DESIGN §5).

Exclusion, the start of a recovery and readmission all change one member's state in an
RG record, from version v to v+1.  Any active member may coordinate a change; it asks
every active member at v (the member being excluded does not vote) to vote, and commits
with YES from a majority of them (``RGRecord.quorum``).  Two changes from the same
version cannot both commit: their majorities share a voter, and a voter holds one lock
per record until it learns the outcome.

The voter's lock is durable (``record_locks.msgpack``): a voter that restarts while it
holds one must not vote for a conflicting change.  It is released by the coordinator's
decision, by asking the coordinator (``record_state``), or as soon as this brick holds
the record at a later version by any route (gossip): then no change from the old version
can commit here anyway.

The coordinator's commit point is adopting the new record into its own persisted map.
A coordinator that restarts before that point has forgotten the change and answers
"aborted" to voters asking about it: it can no longer commit it.

Before voting to exclude a member, a voter checks the suspect itself (a suspect it can
reach is not excluded, unless it answers that its disk is full: it cannot take writes,
and asks for its own exclusion, ``bricks/diskspace.py``), stops granting it leases, and waits until its own last grant to
it has expired (DESIGN §6): so an excluded brick has stopped serving before anyone writes
without it.
"""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, cast

import attrs
import msgpack
from twisted.internet import defer
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from dds.deferreds import gather, sleep
from dds.errors import DDSError, Divergence, InvalidRequest, Refused, StaleMap
from dds.maps import ClusterMap
from dds.messages import (Message, Ping, RecordDecide, RecordPrepare, RecordState, RGChange,
                          RGUpdate)
from dds.partition import PartitionId
from dds.records import (MEMBER_STATES, Member, MemberState, PartitionEntry, Record,
                         RGRecord, record_from_wire)
from dds.rpc import RPCProtocol

from dds.bricks.atomicfile import replace_file
from dds.bricks.context import BrickContext
from dds.bricks.leases import Leases

LOCK_FILE = "record_locks.msgpack"
#: A voter still holding a lock this long after its vote asks the coordinator.
ASK_AFTER_S = 3.0
#: Decided changes a coordinator remembers for voters asking late.
DECIDED_MEMORY = 1000
#: How many recent changes each brick keeps for ``dds-admin status``.
HISTORY = 50

ChangeId = tuple[int, int]
#: Changes during whose vote the member concerned gets no new lease grant.
_BLOCKING = ("excluded", "removed")


class Phase(enum.Enum):
    """A change as its coordinator sees it."""

    VOTING = "pending"
    COMMITTED = "committed"
    ABORTED = "aborted"


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


@attrs.frozen
class ChangeEvent:
    """One committed change, as ``dds-admin status`` shows it ("last exclusion")."""

    rg: str
    version: int
    member: str
    state: str
    reason: str
    coordinator: str
    at: float       # wall-clock time, for people only

    def to_wire(self) -> dict[str, Any]:
        return attrs.asdict(self)


class RecordChanges:
    log = Logger()

    def __init__(self, ctx: BrickContext, leases: Leases, *, lease_s: float,
                 suspect_check_s: float) -> None:
        self.id = ctx.id
        self.fsync = ctx.fsyncs      # the brick's durability mode is fsync (see atomicfile)
        self.maps = maps = ctx.maps
        self.leases = leases
        self.clock = ctx.clock
        self.peer = ctx.peer
        self.path = Path(ctx.data_dir) / LOCK_FILE
        self.metrics = ctx.metrics
        self.lease_s = lease_s
        self.suspect_check_s = suspect_check_s
        self.rng = ctx.rng
        self._counter = 0
        self.locks: dict[str, VoteLock] = {}
        self._ask_timers: dict[str, IDelayedCall] = {}
        self.changes: OrderedDict[ChangeId, Phase] = OrderedDict()
        self._inflight: dict[tuple[str, str, str], list[Deferred[dict[str, Any]]]] = {}
        self.history: list[ChangeEvent] = []
        self._load_locks()
        maps.on_change(self._map_changed)

    def handlers(self) -> dict[type[Message], Callable[[Any], Any]]:
        """The requests this component answers (``Brick`` dispatches them here)."""
        return {RecordPrepare: self.prepare, RecordDecide: self.decide, RecordState: self.state,
                RGUpdate: self.update}

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

    # -- coordinator -------------------------------------------------------------------

    def change(self, msg: RGChange, requester: str | None,
               internal: bool = False) -> Deferred[dict[str, Any]]:
        """Coordinate ``msg``; the same change asked for again while it runs (two
        libraries losing the same member) waits for the first instead of being refused."""
        key = (msg.rg, msg.member, msg.state)
        if key in self._inflight:
            waiter: Deferred[dict[str, Any]] = Deferred()
            self._inflight[key].append(waiter)
            return waiter
        self._inflight[key] = []
        d = ensureDeferred(self._change(msg, requester, internal))

        def done(result: Any) -> Any:
            for waiter in self._inflight.pop(key, []):
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)
            return result
        d.addBoth(done)
        return d

    async def _change(self, msg: RGChange, requester: str | None,
                      internal: bool) -> dict[str, Any]:
        rec = self.maps.map.rgs.get(msg.rg)
        if rec is None:
            raise StaleMap(f"brick {self.id} knows no replica group {msg.rg!r}")
        current = rec.member_state(msg.member)
        if rec.version > msg.version:
            if current == msg.state or (msg.state == "excluded" and current != "active"):
                return {"record": rec.canonical()}      # done already, by someone
            raise StaleMap(f"{msg.rg} is at version {rec.version} here, caller has "
                           f"{msg.version}", rec.canonical())
        if rec.version < msg.version:
            raise Refused(f"brick {self.id} holds {msg.rg} at version {rec.version}, older "
                          f"than the caller's {msg.version}; ask another member")
        if rec.fp != msg.fp:
            raise Divergence(f"{msg.rg} v{rec.version}: fingerprint {rec.fp:#010x} here, "
                             f"{msg.fp:#010x} at caller", rec.canonical())
        if current is None:
            raise InvalidRequest(f"{msg.member} is not a member of {msg.rg}")
        if current == msg.state:
            return {"record": rec.canonical()}
        self._check_transition(rec, msg, current, requester, internal)
        if self.id not in rec.active_members or self.id == msg.member:
            raise Refused(f"brick {self.id} is not an active member of {msg.rg} other than "
                          f"{msg.member}: it cannot coordinate the change")
        new = rec.with_member_state(msg.member, _state(msg.state))
        # A member that asks to be marked recovering votes for it too (it holds the
        # record lock like any voter): in an RG whose other member is dead but not yet
        # excluded, it could otherwise never start its own re-sync.
        voters = [b for b in rec.active_members
                  if b != msg.member or msg.state == "recovering"]
        if len(voters) < rec.quorum:
            raise Refused(f"changing {msg.member} to {msg.state} in {msg.rg} needs "
                          f"{rec.quorum} votes of its active members {list(rec.active_members)}"
                          f"; only {len(voters)} can vote")
        return await self._run(rec, new, voters, msg.member, msg.state, msg.reason)

    async def _run(self, rec: RGRecord, new: RGRecord, voters: list[str], member: str,
                   kind: str, reason: str) -> dict[str, Any]:
        """The majority 2PC of one change from ``rec`` to ``new`` (DESIGN §5).  ``kind``
        is the member's new state, or ``added``/``removed``/``partitions``: each voter
        recomputes the change from it and votes only for exactly that."""
        self._counter += 1
        change = (self.rng.getrandbits(62), self._counter)
        self.changes[change] = Phase.VOTING
        while len(self.changes) > DECIDED_MEMORY:
            self.changes.popitem(last=False)
        self.log.info("change {change}: {member} {kind} in {rg} v{version} ({reason}); "
                      "asking {voters}", change=change, member=member, kind=kind,
                      rg=rec.name, version=rec.version, reason=reason, voters=voters)
        ask = RecordPrepare(change=change, coordinator=self.id, old_version=rec.version,
                            old_fp=rec.fp, record=new.canonical(), member=member,
                            state=kind, reason=reason)
        timeout = self.suspect_check_s + self.lease_s + 2.0
        results = await gather([self._vote(b, ask, timeout) for b in voters])
        yes = [b for b, r in zip(voters, results) if not isinstance(r, BaseException)]
        if len(yes) >= rec.quorum and self.changes.get(change) is Phase.VOTING:
            self.changes[change] = Phase.COMMITTED
            self.maps.merge([new], source=f"record change {change}")   # the commit point
            self._remember(new, _Event(member, kind, reason), self.id)
            self.metrics.inc("record_changes_total")
            self.log.warn("{rg} v{version}: {member} {kind} ({reason})", rg=new.name,
                          version=new.version, member=member, kind=kind, reason=reason)
            # Not to an excluded member: it is presumed gone, and if it is only paused it
            # must stop serving by its lease, not by luck of a message (gossip tells it).
            told = {m.brick for m in rec.members} | {m.brick for m in new.members}
            told.discard(self.id)
            if kind == "excluded":
                told.discard(member)
            self._tell(change, True, new, sorted(told))
            return {"record": new.canonical()}
        self.changes[change] = Phase.ABORTED
        self._tell(change, False, None, yes)
        self.metrics.inc("record_changes_refused_total")
        reasons = "; ".join(f"{b}: {getattr(r, 'message', r)!s}"
                            for b, r in zip(voters, results) if isinstance(r, BaseException))
        raise Refused(f"changing {rec.name} ({member} {kind}): {len(yes)} of the "
                      f"{rec.quorum} votes needed ({reasons})")

    async def update(self, msg: RGUpdate) -> dict[str, Any]:
        """An administrative change of RG ``msg.rg`` (DESIGN §8): its partitions, or a
        member added (as recovering: it joins by recovery) or removed."""
        rec = self.maps.map.rgs.get(msg.rg)
        if rec is None:
            raise StaleMap(f"brick {self.id} knows no replica group {msg.rg!r}")
        if rec.version != msg.version:
            raise StaleMap(f"{msg.rg} is at version {rec.version} here, caller has "
                           f"{msg.version}", rec.canonical())
        if rec.fp != msg.fp:
            raise Divergence(f"{msg.rg} v{rec.version}: fingerprint {rec.fp:#010x} here, "
                             f"{msg.fp:#010x} at caller", rec.canonical())
        given = [x is not None for x in (msg.partitions, msg.add_member, msg.remove_member)]
        if sum(given) != 1:
            raise InvalidRequest("rg_update: give exactly one of partitions, add_member, "
                                 "remove_member")
        if self.id not in rec.active_members:
            raise Refused(f"brick {self.id} is not an active member of {msg.rg}")
        if msg.partitions is not None:
            try:
                entries = [PartitionEntry(PartitionId.parse(p), s) for p, s in msg.partitions]
            except (TypeError, ValueError) as e:
                raise InvalidRequest(f"rg_update: bad partitions: {e}") from None
            new = rec.with_changes(partitions=entries)
            member, kind = "", "partitions"
        elif msg.add_member is not None:
            member, kind = msg.add_member, "added"
            new = _added(rec, member, self.maps.map)
        else:
            member, kind = str(msg.remove_member), "removed"
            new = _removed(rec, member)
        self._check_partitions(rec, new)
        voters = [b for b in rec.active_members if not (kind == "removed" and b == member)]
        if len(voters) < rec.quorum:
            raise Refused(f"{msg.rg}: {rec.quorum} votes needed, {len(voters)} can vote")
        return await self._run(rec, new, voters, member, kind, msg.reason)

    def _check_partitions(self, rec: RGRecord, new: RGRecord) -> None:
        """A partition becomes active here only if no other RG has it active: two RGs
        serving one key range would each accept writes the other never sees.  And the
        new record must leave this brick's map usable (``MapState.check_acceptable``):
        checked at the vote, so that no committed change is refused at its commit."""
        for pid in new.active_partitions - rec.active_partitions:
            for other in self.maps.map.rgs.values():
                if other.name != rec.name and pid in other.active_partitions:
                    raise Refused(f"{pid} is still active in {other.name} "
                                  f"v{other.version} here")
        self.maps.check_acceptable([new])

    def _check_transition(self, rec: RGRecord, msg: RGChange, current: str,
                          requester: str | None, internal: bool) -> None:
        if msg.state == "excluded":
            if current not in ("active", "recovering"):
                raise Refused(f"{msg.member} is {current} in {msg.rg}")
        elif msg.state == "recovering":
            if requester != msg.member:
                raise Refused(f"only {msg.member} itself starts its recovery")
        elif not internal:
            raise Refused(f"{msg.member} becomes active in {msg.rg} only by readmission "
                          "after recovery")

    def _vote(self, brick: str, ask: RecordPrepare, timeout: float) -> Deferred[Any]:
        if brick == self.id:
            return ensureDeferred(self.prepare(ask))
        return ensureDeferred(self._call(brick, ask, timeout))

    async def _call(self, brick: str, msg: Message, timeout: float) -> Any:
        conn = await self.peer(brick)
        return await conn.send(msg, timeout=timeout)

    def _tell(self, change: ChangeId, commit: bool, new: RGRecord | None,
              bricks: list[str]) -> None:
        """The decision to the voters (and, for a commit, every member), best effort:
        a voter that misses it asks, or learns the record by gossip."""
        decision = RecordDecide(change=change, commit=commit,
                                record=new.canonical() if new else None)
        for brick in bricks:
            d = ensureDeferred(self._call(brick, decision, 2.0))
            d.addErrback(self._undelivered, change, brick)

    def _undelivered(self, failure: Failure, change: ChangeId, brick: str) -> None:
        self.log.debug("decision of {change} not delivered to {brick}: {error}",
                       change=change, brick=brick, error=str(failure.value))

    def _remember(self, new: RGRecord, msg: "RGChange | RecordPrepare | VoteLock | _Event",
                  coordinator: str) -> None:
        self.history.append(ChangeEvent(new.name, new.version, msg.member, msg.state,
                                        msg.reason, coordinator, time.time()))
        del self.history[:-HISTORY]

    def readmit(self, rg: str, target: str) -> Deferred[dict[str, Any]]:
        """Make ``target`` active again after it re-synced (the caller holds the fence)."""
        rec = self.maps.map.rgs[rg]
        return self.change(RGChange(rg=rg, version=rec.version, fp=rec.fp, member=target,
                                    state="active", reason="re-synced by partition copy"),
                           requester=self.id, internal=True)

    # -- voter -------------------------------------------------------------------------

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
                self._check_partitions(rec, new)
                expected = new
            elif msg.state == "added":
                expected = _added(rec, msg.member, self.maps.map)
            elif msg.state == "removed":
                expected = _removed(rec, msg.member)
            else:
                expected = rec.with_member_state(msg.member, _state(msg.state))
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
                self._remember(new, lock, lock.coordinator)
        if lock is not None and lock.rg in self.locks:
            self._release(lock.rg, "committed" if msg.commit else "aborted by its "
                          "coordinator")
        return {}

    def state(self, msg: RecordState) -> dict[str, Any]:
        """A voter asks about a change this brick coordinated.  Unknown means aborted:
        either it was, or this brick restarted before its commit point and can no longer
        commit it.  The record as it is here comes along, so a voter whose change did
        commit (before a restart here) catches up and releases its lock."""
        rec = self.maps.map.rgs.get(msg.rg)
        phase = self.changes.get(msg.change, Phase.ABORTED)
        return {"state": phase.value, "record": rec.canonical() if rec else None}

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
            reply = await self._call(lock.coordinator,
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

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {"locks": {rg: lock.to_wire() for rg, lock in self.locks.items()},
                "history": [e.to_wire() for e in self.history]}


def _state(text: str) -> MemberState:
    """A member state from a message (validated there against ``MEMBER_STATES``)."""
    if text not in MEMBER_STATES:
        raise InvalidRequest(f"unknown member state {text!r}")
    return cast(MemberState, text)


@attrs.frozen
class _Event:
    member: str
    state: str
    reason: str


def _added(rec: RGRecord, brick: str, cmap: ClusterMap) -> RGRecord:
    """``rec`` with ``brick`` as a new, recovering member (it joins by recovery)."""
    if rec.member_state(brick) is not None:
        raise Refused(f"{brick} is already a member of {rec.name}")
    bricks = cmap.bricks
    if brick not in bricks:
        raise Refused(f"no brick record for {brick}")
    domain = bricks[brick].failure_domain
    shared = [m.brick for m in rec.members
              if m.brick in bricks and bricks[m.brick].failure_domain == domain]
    if shared:
        raise Refused(f"{brick} shares host {domain!r} with {shared} in {rec.name}")
    return rec.with_changes(members=[*rec.members, Member(brick, "recovering")])


def _removed(rec: RGRecord, brick: str) -> RGRecord:
    """``rec`` without ``brick``; never its last active member."""
    if rec.member_state(brick) is None:
        raise Refused(f"{brick} is not a member of {rec.name}")
    if rec.active_members == (brick,):
        raise Refused(f"{brick} is the last active member of {rec.name}")
    return rec.with_changes(members=[m for m in rec.members if m.brick != brick])
