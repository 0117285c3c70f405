"""Changes of RG records by majority 2PC with a record lock (DESIGN §5).

Exclusion, the start of a recovery and readmission all change one member's state in an
RG record, from version v to v+1.  Any active member may coordinate a change; it asks
every active member at v (the member being excluded does not vote) to vote, and commits
with YES from a majority of them (``RGRecord.quorum``).  Two changes from the same
version cannot both commit: their majorities share a voter, and a voter holds one lock
per record until it learns the outcome.

This module is the coordinator's side (and the brick's history of changes); the voter's
side, with its durable vote locks and the checks before an exclusion, is
``bricks/rgvoter.py``, and the record each kind of change makes is computed by both from
``bricks/rgtransitions.py``.

The coordinator's commit point is adopting the new record into its own persisted map.
A coordinator that restarts before that point has forgotten the change and answers
"aborted" to voters asking about it: it can no longer commit it.
"""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from dds.deferreds import gather
from dds.errors import Divergence, InvalidRequest, Refused, StaleMap
from dds.messages import (Message, RecordDecide, RecordPrepare, RecordState, RGChange,
                          RGUpdate)
from dds.partition import PartitionId
from dds.records import PartitionEntry, RGRecord

from dds.bricks.context import BrickContext
from dds.bricks.leases import Leases
from dds.bricks.rgtransitions import added, check_partitions, member_state, removed
from dds.bricks.rgvoter import ChangeId, RecordVoter, VoteLock, call

#: Decided changes a coordinator remembers for voters asking late.
DECIDED_MEMORY = 1000
#: How many recent changes each brick keeps for ``dds-admin status``.
HISTORY = 50



class Phase(enum.Enum):
    """A change as its coordinator sees it."""

    VOTING = "pending"
    COMMITTED = "committed"
    ABORTED = "aborted"


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
        self.maps = ctx.maps
        self.peer = ctx.peer
        self.metrics = ctx.metrics
        self.lease_s = lease_s
        self.suspect_check_s = suspect_check_s
        self.rng = ctx.rng
        self._counter = 0
        self.changes: OrderedDict[ChangeId, Phase] = OrderedDict()
        self._inflight: dict[tuple[str, str, str], list[Deferred[dict[str, Any]]]] = {}
        self.history: list[ChangeEvent] = []
        #: This brick as a voter (``bricks/rgvoter.py``), with its durable vote locks.
        self.voter = RecordVoter(ctx, leases, suspect_check_s=suspect_check_s,
                                 remember=self._remember)

    @property
    def locks(self) -> dict[str, VoteLock]:
        """The record locks this brick holds as a voter, by RG."""
        return self.voter.locks

    def handlers(self) -> dict[type[Message], Callable[[Any], Any]]:
        """The requests this component answers (``Brick`` dispatches them here)."""
        return {RecordPrepare: self.voter.prepare, RecordDecide: self.voter.decide,
                RecordState: self.state, RGUpdate: self.update}

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
        new = rec.with_member_state(msg.member, member_state(msg.state))
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
        # A voter asked to exclude a member first checks it and waits for its own lease
        # grant to it to expire: up to a lease and more.  A readmission is voted on at
        # once, and runs under the recovery source's write fence: a voter that has not
        # answered within a second past the suspect check is paused or cut off, and
        # waiting longer only holds the fence (issue 15: "no fence held over 2 s").
        timeout = self.suspect_check_s + (1.0 if kind == "active"
                                          else self.lease_s + 2.0)
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
            new = added(rec, member, self.maps.map)
        else:
            member, kind = str(msg.remove_member), "removed"
            new = removed(rec, member)
        check_partitions(self.maps, rec, new)
        voters = [b for b in rec.active_members if not (kind == "removed" and b == member)]
        if len(voters) < rec.quorum:
            raise Refused(f"{msg.rg}: {rec.quorum} votes needed, {len(voters)} can vote")
        return await self._run(rec, new, voters, member, kind, msg.reason)

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
            return ensureDeferred(self.voter.prepare(ask))
        return ensureDeferred(call(self.peer, brick, ask, timeout))

    def _tell(self, change: ChangeId, commit: bool, new: RGRecord | None,
              bricks: list[str]) -> None:
        """The decision to the voters (and, for a commit, every member), best effort:
        a voter that misses it asks, or learns the record by gossip."""
        decision = RecordDecide(change=change, commit=commit,
                                record=new.canonical() if new else None)
        for brick in bricks:
            d = ensureDeferred(call(self.peer, brick, decision, 2.0))
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

    # -- a voter asks ------------------------------------------------------------------

    def state(self, msg: RecordState) -> dict[str, Any]:
        """A voter asks about a change this brick coordinated.  Unknown means aborted:
        either it was, or this brick restarted before its commit point and can no longer
        commit it.  The record as it is here comes along, so a voter whose change did
        commit (before a restart here) catches up and releases its lock."""
        rec = self.maps.map.rgs.get(msg.rg)
        phase = self.changes.get(msg.change, Phase.ABORTED)
        return {"state": phase.value, "record": rec.canonical() if rec else None}

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {"locks": {rg: lock.to_wire() for rg, lock in self.locks.items()},
                "history": [e.to_wire() for e in self.history]}


@attrs.frozen
class _Event:
    member: str
    state: str
    reason: str


__all__ = ["ChangeEvent", "Phase", "RecordChanges"]
