"""Cooperative termination of prepared transactions (DESIGN §4, coordinator failure).

A participant that holds a transaction prepared past its deadline cannot wait for its
coordinator forever: it asks the other members.  Any committed → commit; any aborted (or
never prepared it, which that member then records as aborted) → abort; all prepared →
commit, since everyone voted YES and the coordinator has given up.  With a member
unreachable and nobody decided, the transaction stays prepared and is asked about again.

"All prepared → commit" is safe only if no coordinator ABORT lands afterwards, and a
coordinator does abort when a vote is late, even a YES.  So a member that has answered
"prepared" to a query, started its own termination, or restored the transaction after a
restart is *fenced*: it refuses the coordinator's ABORT (the coordinator then reports
``Indeterminate``) and the members' termination decides.

This module also serves ``dds-admin txns`` (listing) and ``dds-admin repair`` (termination
now, on request).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import attrs
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dds.errors import DDSError, InvalidRequest, ReplicaDamaged, UnknownTransaction
from dds.messages import TxnId, TxnState as TxnStateMsg
from dds.metrics import Metrics
from dds.records import RGRecord
from dds.rpc import RPCProtocol, State

from dds.bricks.mapstate import MapState, parse_pid
from dds.bricks.participant import Participant, Transaction, TxnState
from dds.bricks.storage import Storage

#: How long termination waits for each other member's answer.
TXN_STATE_TIMEOUT_S = 2.0
#: A transaction prepared this long that holds a key another PREPARE or a read wants is
#: asked about early (``Terminator.nudge``), and again at most this often.  Longer than a
#: commit normally takes, so that the common case costs no query at all.
EARLY_ASK_S = 0.1
_DECISION_OF_STATE = {TxnState.COMMITTING: "commit", TxnState.COMMITTED: "commit",
                      TxnState.ABORTED: "abort"}


#: ``exclude(rg, member, reason)``: true once ``member`` is no longer active in ``rg``.
Exclude = Callable[[RGRecord, str, str], Awaitable[bool]]


@attrs.frozen
class Termination:
    """What one run of the termination rule decided for one transaction on this brick:
    ``commit``, ``abort`` or ``in-doubt`` (nothing decided; it stays prepared), with each
    other member's answer (``prepared``, ``committed``, ``aborted`` or ``unreachable``)."""

    txid: TxnId
    pid: str
    decision: str
    members: tuple[str, ...] = ()
    states: tuple[str, ...] = ()
    reason: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"txid": list(self.txid), "pid": self.pid, "decision": self.decision,
                "members": list(self.members), "states": list(self.states),
                "reason": self.reason}


class Terminator:
    log = Logger()

    def __init__(self, brick_id: str, participant: Participant, storage: Storage,
                 maps: MapState, peer: Callable[[str], Awaitable[RPCProtocol]],
                 clock: IReactorTime, metrics: Metrics,
                 membership_changing: Callable[[str], bool] = lambda rg: False,
                 exclude: Exclude | None = None) -> None:
        self.id = brick_id
        #: Ask the RG to exclude an unreachable member (DESIGN §4: the others then decide
        #: among themselves); None: it stays in doubt until the member answers.
        self.exclude = exclude
        #: Whether this brick voted on a change of the RG's record whose outcome it does
        #: not know yet (``RecordChanges``): the members to ask may be changing.
        self.membership_changing = membership_changing
        self.participant = participant
        self.storage = storage
        self.maps = maps
        self.peer = peer
        self.clock = clock
        self.metrics = metrics

    # -- requests from the coordinator and from other members --------------------------

    def coordinator_abort(self, txid: TxnId) -> dict[str, Any]:
        """An ABORT from the coordinator, unless termination already owns the outcome."""
        txn = self.participant.active.get(txid)
        if txn is not None and txn.queried and txn.state is TxnState.PREPARED:
            self.metrics.inc("aborts_refused_total")
            raise InvalidRequest(f"transaction {txid} is being resolved by termination "
                                 "among its members, who decide its outcome")
        return self.participant.abort(txid)

    def answer(self, msg: TxnStateMsg) -> dict[str, str]:
        """A termination query from another member.  A transaction never prepared here is
        recorded as aborted first, so a late PREPARE cannot revive it; one forgotten
        because this brick restarted is answered from the data (its version present).
        A ``peek`` changes nothing here: it only learns a decision already taken."""
        state = self.participant.state_of(msg.txid)
        if state is None and msg.pid is not None and msg.key is not None \
                and msg.new_version is not None:
            pid = parse_pid(msg.pid)
            if self.storage.has_partition(str(pid)):
                if self.storage.read(str(pid), msg.key).version >= msg.new_version:
                    return {"state": "committed"}
        if msg.peek:
            if state is None or state is TxnState.PREPARING:
                return {"state": "unknown"}
            return {"state": "prepared" if state is TxnState.COMMITTING else state.value}
        if state is None or state is TxnState.PREPARING:
            self.participant.abort(msg.txid)
            return {"state": "aborted"}
        if state is TxnState.COMMITTING:
            return {"state": "prepared"}
        if state is TxnState.PREPARED:
            self.participant.active[msg.txid].queried = True
        return {"state": state.value}

    # -- early: a key that is wanted -------------------------------------------------

    def nudge(self, lock_key: Any) -> None:
        """A PREPARE or a read waits for ``lock_key``: if the transaction holding it has
        been prepared a while, ask the other members now rather than at the deadline.

        With parallel commit a member that missed its COMMIT holds the key until it
        learns the outcome, and readers of the key wait meanwhile (DESIGN §4): a peek
        finds a member that committed (or aborted) and settles it in one round trip.
        When the connection the PREPARE came on is closed, the coordinator is likely
        gone: then termination runs in full, "all prepared → commit" included.  That is
        safe at any time: every member that answers "prepared" refuses a later
        coordinator ABORT (see the module docstring)."""
        holder = self.participant.locks.holder(lock_key)
        txn = self.participant.active.get(holder) if holder is not None else None
        if txn is None or txn.state is not TxnState.PREPARED:
            return
        now = self.clock.seconds()
        if now - txn.prepared_at < EARLY_ASK_S or (
                txn.asked_at is not None and now - txn.asked_at < EARLY_ASK_S):
            return
        txn.asked_at = now
        gone = txn.origin is not None and getattr(txn.origin, "state", None) is State.CLOSED
        self.metrics.inc("txn_early_asks_total")
        d = ensureDeferred(self.terminate(txn, infer_commit=gone, peek=not gone))
        d.addErrback(lambda f: self.log.failure("early termination of {txid} failed",
                                                failure=f, txid=txn.txid))

    # -- the deadline timer ------------------------------------------------------------

    def later(self, txn: Transaction) -> None:
        """The participant's deadline timer: run termination; while it stays in doubt,
        ask again every ``txn_deadline_ms``."""
        txn.timer = None
        self.metrics.inc("txn_terminations_total")
        d = ensureDeferred(self.terminate(txn))
        d.addCallback(self._retry_if_in_doubt, txn)
        d.addErrback(lambda f: self.log.failure("termination of {txid} failed", failure=f,
                                                txid=txn.txid))

    def _retry_if_in_doubt(self, result: Termination, txn: Transaction) -> None:
        if result.decision == "in-doubt" and txn.state is TxnState.PREPARED \
                and txn.timer is None and self.participant.active.get(txn.txid) is txn:
            txn.timer = self.clock.callLater(self.participant.txn_deadline_s,
                                             self.later, txn)

    # -- the rule ----------------------------------------------------------------------

    async def terminate(self, txn: Transaction, infer_commit: bool = True,
                        peek: bool = False, excluded: bool = False) -> Termination:
        """The termination rule for ``txn``, applied here; returns what it decided.
        "All prepared → commit" only with ``infer_commit`` (past the deadline, the
        coordinator has given up; before it, a live coordinator may still abort).
        ``peek``: ask without side effects on the others, and decide only by a decision
        one of them already took."""
        pid = str(txn.pid)
        if txn.state is not TxnState.PREPARED:
            return Termination(txn.txid, pid, _DECISION_OF_STATE.get(txn.state, "in-doubt"),
                               reason=f"{txn.state.value} here")
        if infer_commit and not peek:
            txn.queried = True      # we may commit by "all prepared": no coordinator ABORT now
        rg = self._rg_of(txn)
        if rg is None:
            # Mid-reorganization (the partition between two RGs): nobody to ask yet.
            return Termination(txn.txid, pid, "in-doubt",
                               reason=f"{pid} is not active in exactly one RG here")
        if self.membership_changing(rg.name):
            return Termination(txn.txid, pid, "in-doubt",
                               reason=f"the membership of {rg.name} is changing")
        others = tuple(b for b in self._asked(txn, rg) if b != self.id)
        query: dict[str, Any] = {"txid": list(txn.txid), "pid": pid, "key": txn.key,
                                 "new_version": txn.new_version}
        if peek:
            query["peek"] = True
        # All at once: a member that does not answer costs one timeout, not one each.
        answers: list[tuple[bool, str]] = await DeferredList(
            [ensureDeferred(self._ask(brick, txn, query)) for brick in others],
            consumeErrors=True)
        states = [state if ok else "unreachable" for ok, state in answers]
        if txn.state is not TxnState.PREPARED:      # the coordinator's decision arrived
            return Termination(txn.txid, pid, _DECISION_OF_STATE.get(txn.state, "in-doubt"),
                               others, tuple(states),
                               f"{txn.state.value} here meanwhile (by its coordinator)")
        now = self._rg_of(txn)
        if now is None or now.version != rg.version or self.membership_changing(rg.name):
            # The answers were asked of the members of an older record: a member
            # excluded since may have answered "aborted" while the current members
            # commit by "all prepared".  Decide only among one record's members.
            return Termination(txn.txid, pid, "in-doubt", others, tuple(states),
                               f"the record of {rg.name} changed while asking")
        if "committed" in states:
            decision, reason = "commit", "a member committed"
        elif "aborted" in states:
            decision, reason = "abort", "a member aborted or never prepared it"
        elif peek:
            return Termination(txn.txid, pid, "in-doubt", others, tuple(states),
                               "asked early: nobody decided yet")
        elif all(s in ("prepared", "damaged") for s in states):
            # A damaged member (its replica needs a copy, so it may have lost a YES vote)
            # counts as prepared: this member still holds its YES, so no coordinator
            # reported a definite failure (that needs every YES undone), and committing
            # can contradict no reply; aborting could undo a reported success.  The
            # damaged member gets the outcome with its copy.
            if not infer_commit:
                reason = "every member prepared, but the deadline has not passed"
                self.log.info("transaction {txid} left prepared: {reason}", txid=txn.txid,
                              reason=reason)
                return Termination(txn.txid, pid, "in-doubt", others, tuple(states), reason)
            decision, reason = "commit", (
                "every member prepared" if "damaged" not in states else
                "every member prepared or cannot tell (its replica needs a copy)")
        elif (infer_commit and not excluded and self.exclude is not None
              and sum(1 for b in rg.active_members
                      if b == self.id or dict(zip(others, states)).get(b) != "unreachable")
              >= rg.quorum):
            # Someone unreachable and nobody decided: exclude it (its lease lapses first,
            # so it serves nothing meanwhile), then decide among the remaining members.
            lost = [b for b, st in zip(others, states) if st == "unreachable"]
            # One member coordinates the exclusion (two would lock the record against
            # each other and both fail): the first of the others by id.  The rest ask
            # again later and find the decision made.
            first = min(b for b in rg.active_members if b not in lost)
            if first != self.id:
                return Termination(txn.txid, pid, "in-doubt", others, tuple(states),
                                   f"{first} excludes the unreachable {lost}")
            why = f"unreachable during termination of {txn.txid}"
            gone = []
            for b in lost:
                gone.append(await self.exclude(rg, b, why))
                if not gone[-1]:
                    break
            if all(gone):
                self.log.warn("excluded {bricks} from {rg} to terminate {txid}",
                              bricks=lost, rg=rg.name, txid=txn.txid)
                return await self.terminate(txn, infer_commit, peek, excluded=True)
            self.log.warn("transaction {txid} stays in doubt: {states}", txid=txn.txid,
                          states=states)
            return Termination(txn.txid, pid, "in-doubt", others, tuple(states),
                               "a member is unreachable and could not be excluded")
        else:
            # Someone unreachable and nobody decided: stay prepared (ask again later).
            self.log.warn("transaction {txid} stays in doubt: {states}", txid=txn.txid,
                          states=states)
            return Termination(txn.txid, pid, "in-doubt", others, tuple(states),
                               "a member is unreachable and nobody decided")
        self.log.info("terminated {txid} by {decision} (members {others}: {states})",
                      txid=txn.txid, decision=decision, states=states, others=others)
        if decision == "commit":
            outcome = self.participant.commit(txn.txid)
            if isinstance(outcome, Deferred):
                await outcome
        else:
            self.participant.abort(txn.txid)
        return Termination(txn.txid, pid, decision, others, tuple(states), reason)

    def _asked(self, txn: Transaction, rg: RGRecord) -> tuple[str, ...]:
        """Whom termination asks: every active member of ``rg`` -- the transaction's
        participants that are still active, and the members readmitted since the
        PREPARE.  A participant excluded since no longer decides (its replica is
        copied again).  A readmitted member answers from its data: it copied its
        replica from a member holding no unresolved vote of this transaction (a copy's
        fence drains them first), so the write is in its copy if the transaction
        committed, and if not, it can no longer commit: a commit would never reach that
        member.  Asking only the participants let a member whose only other participant
        had been excluded commit by "every member prepared" over nobody, while a member
        readmitted from that excluded participant (which had never prepared it) lacked
        the write: the replicas diverged (the ci fault profile, seed 299961328,
        session 10).  DESIGN §4 departs here; docs/architecture.md says why."""
        return rg.active_members

    async def _ask(self, brick: str, txn: Transaction, query: dict[str, Any]) -> str:
        """One member's answer: its state of the transaction, ``damaged`` (its replica
        needs a copy, so it may have lost its vote) or ``unreachable``."""
        try:
            conn = await self.peer(brick)
            reply = await conn.call("txn_state", query, timeout=TXN_STATE_TIMEOUT_S)
            return str(reply.get("state"))
        except ReplicaDamaged as e:
            self.log.warn("termination of {txid}: {brick} cannot tell: {error}",
                          txid=txn.txid, brick=brick, error=e.message)
            return "damaged"
        except DDSError as e:
            self.log.warn("termination of {txid}: {brick} unreachable: {error}",
                          txid=txn.txid, brick=brick, error=e.message)
            return "unreachable"

    def _rg_of(self, txn: Transaction) -> RGRecord | None:
        """The one RG whose record has ``txn``'s partition active, or None."""
        found = [rg for rg in self.maps.map.rgs.values() if txn.pid in rg.active_partitions]
        return found[0] if len(found) == 1 else None

    # -- operators: dds-admin txns / repair --------------------------------------------

    def listing(self) -> list[dict[str, Any]]:
        """Every active transaction, oldest first (``dds-admin txns`` filters)."""
        now = self.clock.seconds()
        out = []
        for t in self.participant.active.values():
            out.append({
                "txid": list(t.txid), "pid": str(t.pid), "key": t.key, "op": t.op,
                "state": t.state.value, "age_s": now - t.prepared_at,
                "deadline_s": None if t.due_at is None else t.due_at - t.prepared_at,
                "due_in_s": None if t.due_at is None else t.due_at - now,
                "deadline_passed": self.participant.deadline_passed(t, now),
                "new_version": t.new_version,
            })
        out.sort(key=lambda e: -float(e["age_s"]))  # type: ignore[arg-type]
        return out

    async def resolve(self, txid: TxnId | None, force: bool) -> list[Termination]:
        """Termination now, on request: for ``txid``, or for every prepared transaction
        past its deadline (``force``: before it too).  The deadline timers are left as
        they are: a transaction that stays in doubt is still retried by them."""
        participant = self.participant
        if txid is not None:
            txn = participant.active.get(txid)
            if txn is not None:
                return [await self._resolve_one(txn, force)]
            state = participant.state_of(txid)
            if state is None:
                raise UnknownTransaction(f"transaction {txid} is unknown on brick {self.id}")
            return [Termination(txid, "", _DECISION_OF_STATE.get(state, "in-doubt"),
                                reason=f"already {state.value} here")]
        chosen = [t for t in participant.active.values()
                  if t.state is TxnState.PREPARED
                  and (force or participant.deadline_passed(t))]
        done: list[tuple[bool, Any]] = await DeferredList(
            [ensureDeferred(self._resolve_one(t, force)) for t in chosen],
            consumeErrors=True)
        return [r for ok, r in done if ok]

    async def _resolve_one(self, txn: Transaction, force: bool) -> Termination:
        passed = self.participant.deadline_passed(txn)
        self.log.warn("resolving {txid} on request{how}", txid=txn.txid,
                      how=" (forced, before its deadline)" if force and not passed else "")
        try:
            return await self.terminate(txn, infer_commit=force or passed)
        except Exception as e:      # e.g. the commit could not be made durable
            self.log.error("resolving {txid} failed: {error}", txid=txn.txid, error=repr(e))
            return Termination(txn.txid, str(txn.pid), "in-doubt",
                               reason=f"failed: {getattr(e, 'message', None) or e!r}")
