"""The 2PC participant (DESIGN §4): prepare, commit and abort of single-key writes.

Each transaction is a ``Transaction`` with a named state::

    PREPARING ──lock, condition, vote recorded──▶ PREPARED ──COMMIT──▶ COMMITTING
        │                                            │                     │ durable
        └────────────── NO vote / ABORT ─────────────┴──▶ ABORTED          ▼
                                                                       COMMITTED

The key lock is held from PREPARING until the transaction is COMMITTED (after the write is
durable) or ABORTED, so a read that finds the key locked waits for the outcome.  The YES
vote is sent only after its record is durable in the brick's transaction log, and the
record is settled only once the outcome is durable, so a restarted brick finds every
transaction it may still owe (``restore``) and resolves it by termination.  A
transaction id seen first in an ABORT is recorded as ABORTED, so a PREPARE that arrives
after its coordinator gave up is refused rather than left holding a lock.  Decided
transactions are remembered for a while so that a repeated COMMIT or ABORT gets the same
answer.

Around it: the transaction and its states (``bricks/txn.py``), the deadline sweep that
hands a prepared transaction to termination (``bricks/txdeadlines.py``), and the write
fence with its drain (``bricks/writefence.py``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from dds import failpoints
from dds.errors import (DDSError, Exists, InternalError, InvalidRequest, Locked,
                        Recovering, ReplicaDamaged, StorageFull, UnknownTransaction,
                        ReplayRefused, VersionMismatch)
from dds.messages import Prepare, TxnId
from dds.metrics import Metrics
from dds.partition import PartitionId
from dds.ratelimit import LogLimiter
from dds.rpc import LATER

from dds.bricks.damage import unreadable
from dds.bricks.drtags import DrTagStore
from dds.bricks.locks import LockTable
from dds.bricks.rowcheck import row_checksum
from dds.bricks.storage import PreparedRecord, Storage
from dds.bricks.txdeadlines import Deadlines
from dds.bricks.txn import DECIDED_MEMORY, Reply, Transaction, TxnState
from dds.bricks.writefence import WriteFence

class Participant:
    log = Logger()

    def __init__(self, storage: Storage, locks: LockTable, clock: IReactorTime,
                 metrics: Metrics, lock_wait_s: float, txn_deadline_s: float,
                 on_deadline: Callable[[Transaction], None] | None = None,
                 max_txn_deadline_s: float = 30.0) -> None:
        self.storage = storage
        self.locks = locks
        self.clock = clock
        self.metrics = metrics
        self.lock_wait_s = lock_wait_s
        self.txn_deadline_s = txn_deadline_s
        #: The cap on the deadline a coordinator may ask for (``timeout_ms``): a caller
        #: that asks for ten minutes and disappears must not hold a key locked for twenty.
        #: Termination is safe at any time (DESIGN §4), so the cap costs a slow coordinator
        #: at most an answer decided by termination, never a wrong one.
        self.max_txn_deadline_s = max_txn_deadline_s
        #: Called with a key's lock when a PREPARE or a read finds it held by another
        #: transaction (termination may learn its outcome early: ``Terminator.nudge``).
        self.on_blocked: Callable[[Any], None] = lambda lock_key: None
        self.active: dict[TxnId, Transaction] = {}
        self.decided: OrderedDict[TxnId, tuple[TxnState, int]] = OrderedDict()
        #: The deadlines of prepared transactions (``bricks/txdeadlines.py``): one timer.
        self.deadlines = Deadlines(clock, metrics, self.active, on_deadline)
        self.on_deadline = self.deadlines.on_deadline
        # Bound once: every vote arms a deadline, every decision cancels it.
        self._wake = self.deadlines.wake
        self._cancel_timer = self.deadlines.cancel
        #: Write fence of recovery (DESIGN §7) and of moves, splits and merges
        #: (``bricks/writefence.py``): ``fenced`` is its dict, checked by every vote.
        self.writes = WriteFence(clock, self.active, lambda lock_key: self.on_blocked(lock_key))
        self.fenced = self.writes.fenced
        #: The drains waiting (the fence's list): checked whenever a transaction ends.
        self._quiet_waiters = self.writes.waiters
        self._schedule_quiet_check = self.writes.schedule_check
        #: A read or write of a partition whose file turned out unreadable
        #: (``bricks/damage.py``): ``on_unreadable(pid, error)`` sets it aside and returns
        #: the error to answer (``ReplicaDamaged``).
        self.on_unreadable: Callable[[str, BaseException], DDSError] | None = None
        #: A vote or write could not be made durable: ``full(error)`` is true when the
        #: brick's disk is full (``bricks/diskspace.py``), which it then handles; the
        #: caller hears ``StorageFull``.
        self.full: Callable[[BaseException], bool] = lambda error: False
        #: The DR tags (``bricks/drtags.py``), set by the brick: a YES vote on a primary
        #: a DR site follows carries its time and the tag.
        self.dr_tags: DrTagStore | None = None
        #: The lines about failed records: a full disk fails every one of them.
        self._failures = LogLimiter(clock, self.log, per_window=5, window_s=10.0)

    # -- phase one -----------------------------------------------------------------------

    def prepare(self, msg: Prepare, pid: PartitionId,
                recheck: Callable[[], Any]) -> dict[str, int] | Deferred[dict[str, int]]:
        """Vote on ``msg`` (see :meth:`vote`)."""
        return self.vote(msg.txid, msg.ts, pid, msg.key, msg.op, msg.value,
                         msg.expected_version, msg.timeout_ms, recheck,
                         participants=msg.participants)

    def vote(self, txid: TxnId, ts: tuple[int, int], pid: PartitionId, key: bytes, op: str,
             value: bytes | None, expected_version: int | None, timeout_ms: int,
             recheck: Callable[[], Any], pid_text: str | None = None,
             reply: Reply | None = None, to: Any = None,
             participants: tuple[str, ...] = ()) -> Any:
        """Vote on a validated PREPARE: the YES vote, or raises (or fails with) the NO
        reason.  ``recheck`` re-validates the map after waiting for a lock (it may have
        moved on meanwhile).  An uncontended key is voted on at once, without waiting.
        With ``reply``, a vote that waits for its record to be durable returns ``LATER``
        and is answered by ``reply(to, ...)`` instead of a Deferred.  ``participants``
        are recorded with the vote: termination asks them."""
        if failpoints.ARMED:
            failpoints.fire("prepare.before_vote")
        known = self.active.get(txid)
        if known is not None:
            if known.state is TxnState.PREPARED:            # a repeated PREPARE
                if known.voted_ms:
                    return {"version": known.new_version - 1, "at": known.voted_ms}
                return {"version": known.new_version - 1}
            raise InvalidRequest(f"transaction {txid} is already {known.state.value}")
        if self.fenced and pid in self.fenced:
            # Before any lock: a fenced partition takes no new transaction, so the ones
            # in flight can drain (``quiesce``).  A repeated PREPARE above still answers.
            self.metrics.inc("prepare_fenced_total")
            raise Recovering(f"writes to {pid} are fenced while a replica re-syncs")
        past = self.decided.get(txid)
        if past is not None:
            raise Locked(f"transaction {txid} was already {past[0].value}")
        txn = Transaction(txid, pid, key, op, value, self.clock.seconds(), ts,
                          expected_version, timeout_ms, pid_text)
        if to is not None:
            txn.origin = to[0]
        txn.participants = participants
        self.active[txid] = txn
        if self.locks.try_acquire(txn.lock_key, txid, ts):
            # The caller checked the map just now: nothing to re-check.
            return self._vote(txn, None, reply, to)
        self.on_blocked(txn.lock_key)
        return Deferred.fromCoroutine(self._prepare_contended(txn, recheck))

    async def _prepare_contended(self, txn: Transaction,
                                 recheck: Callable[[], Any]) -> dict[str, int]:
        try:
            await self.locks.acquire(txn.lock_key, txn.txid, txn.ts, self.lock_wait_s)
        except DDSError:
            self._forget(txn, TxnState.ABORTED)
            self.metrics.inc("prepare_locked_total")
            raise
        if txn.state is TxnState.ABORTED:     # an ABORT arrived while we waited
            self.locks.release(txn.lock_key, txn.txid)
            self._forget(txn, TxnState.ABORTED)
            raise Locked(f"transaction {txn.txid} was aborted while waiting for its lock")
        vote = self._vote(txn, recheck)
        if isinstance(vote, Deferred):      # the vote's record is being made durable
            return await vote
        return vote

    def _vote(self, txn: Transaction, recheck: Callable[[], Any] | None,
              reply: Reply | None = None, to: Any = None) -> Any:
        """With the lock held: check the condition and stage, or undo and say NO."""
        try:
            if recheck is not None:
                recheck()
            current = self.storage.read(txn.pid_text, txn.key)
            if txn.op == "create" and current.value is not None:
                raise Exists(f"key exists (version {current.version})",
                             {"version": current.version})
            if txn.op == "cas" and current.version != txn.expected_version:
                raise VersionMismatch(f"key is at version {current.version}, "
                                      f"expected {txn.expected_version}",
                                      {"version": current.version})
            if txn.op == "replay" and current.version >= (txn.expected_version or 0):
                # DESIGN §12: a replay never overwrites a newer (or the same) write.
                self.metrics.inc("dr_replays", outcome="newer")
                raise ReplayRefused(f"replay of version {txn.expected_version} refused: "
                                    f"this site holds version {current.version}",
                                    {"version": current.version, "reason": "newer"})
        except Exception as e:
            # A NO, or the replica failed to read the key (a damaged file, a bug): either
            # way nothing is held, not even the lock (an unexpected error once left the
            # key locked for good).
            self.locks.release(txn.lock_key, txn.txid)
            self._forget(txn, TxnState.ABORTED)
            self.metrics.inc("prepare_no_total")
            if self.on_unreadable is not None and unreadable(e):
                raise self.on_unreadable(txn.pid_text, e) from None
            raise
        txn.new_version = (txn.expected_version or 0) if txn.op == "replay" \
            else current.version + 1
        txn.checksum = row_checksum(txn.key, txn.new_version,
                                    None if txn.op == "remove" else txn.value)
        # The vote is sent only once the record of it is durable: a brick that dies after
        # voting YES must find the transaction again when it restarts.
        deadline = max(self.txn_deadline_s,
                       min(2 * txn.timeout_ms / 1000.0, self.max_txn_deadline_s))
        if reply is not None:
            if self.storage.prepare_then(txn.pid_text, txn.txid, txn.key, txn.op, txn.value,
                                         txn.new_version, txn.ts, self._recorded,
                                         (txn, deadline, reply, to), txn.checksum,
                                         txn.participants):
                return LATER
            return self._prepared(None, txn, deadline)    # memory durability: no wait
        recorded = self.storage.prepare(txn.pid_text, txn.txid, txn.key, txn.op, txn.value,
                                        txn.new_version, txn.ts, txn.checksum,
                                        txn.participants)
        if recorded.called:          # memory durability: no wait
            return self._prepared(None, txn, deadline)
        return recorded.addCallbacks(self._prepared, self._record_failed,
                                     callbackArgs=(txn, deadline), errbackArgs=(txn,))

    def _prepared(self, _: None, txn: Transaction, deadline: float) -> dict[str, int]:
        if txn.state is TxnState.ABORTED:    # an ABORT arrived while the record was written
            self.storage.forget_prepared(txn.txid)
            self.locks.release(txn.lock_key, txn.txid)
            self._forget(txn, TxnState.ABORTED)
            raise Locked(f"transaction {txn.txid} was aborted while being prepared")
        txn.state = TxnState.PREPARED
        now = self.clock.seconds()
        txn.due_at = due = now + deadline
        self._wake(txn, due)
        self.metrics.inc("prepare_yes_total")
        if failpoints.ARMED:
            failpoints.fire("prepare.after_vote")
        tags = self.dr_tags
        if tags is not None and tags.attached():
            return self._tagged(txn, now, tags)
        return {"version": txn.new_version - 1}

    def _tagged(self, txn: Transaction, now: float, tags: DrTagStore) -> dict[str, Any]:
        """A YES vote on a primary a DR site follows (DESIGN §12): when it was recorded
        (``at``, ms on this brick's clock) and the partition's DR tag if this brick holds
        one.  The library keeps the write in its journal until a tag passes ``at``."""
        txn.voted_ms = int(now * 1000)
        reply: dict[str, Any] = {"version": txn.new_version - 1, "at": txn.voted_ms}
        tag = tags.tag(txn.pid_text)
        if tag is not None:
            reply["dr"] = tag
        return reply

    def _recorded(self, ctx: tuple[Transaction, float, Reply, Any],
                  error: BaseException | None) -> None:
        """The vote's record is durable (or could not be written): answer the vote."""
        txn, deadline, reply, to = ctx
        try:
            if error is not None:
                result: Any = self._record_failed(Failure(error), txn).value
            else:
                result = self._prepared(None, txn, deadline)
        except Exception as e:  # noqa: BLE001 -- the NO vote (or a failpoint's error)
            result = e
        reply(to, result)

    def _record_failed(self, failure: Failure, txn: Transaction) -> Failure:
        """The prepare record could not be written (disk full …): vote NO."""
        self.locks.release(txn.lock_key, txn.txid)
        self._forget(txn, TxnState.ABORTED)
        self.metrics.inc("prepare_record_failures_total")
        self._failures.error("could not record prepared {txid}: {error}", txid=txn.txid,
                             error=repr(failure.value))
        if failure.value is not None and self.full(failure.value):
            return Failure(StorageFull(f"could not record the vote: {failure.value}"))
        return Failure(InternalError(f"could not record the vote: {failure.value}"))

    def restore(self, records: Iterable[PreparedRecord], resolve_after_s: float) -> int:
        """After a restart: every recorded YES vote whose outcome is not already in the
        data is a prepared transaction again, with its lock, resolved by termination soon
        (its coordinator has likely given up).  A key already at the record's new version
        (or later) means the transaction was decided here and only its record's removal
        was lost: while a member holds a transaction prepared, no later one can commit
        the key anywhere."""
        n = 0
        for rec in records:
            pid = PartitionId.parse(rec.pid)
            if not self.storage.has_partition(rec.pid):
                # The replica is gone (dropped after a move): nothing here to commit to.
                self.log.warn("dropping the prepared record of {txid}: partition {pid} is "
                              "no longer held here", txid=rec.txid, pid=rec.pid)
                self.storage.forget_prepared(rec.txid)
                continue
            try:
                decided = self.storage.read(rec.pid, rec.key).version >= rec.new_version
            except ReplicaDamaged:
                decided = False     # the row is being repaired: termination decides
            if decided:
                self.storage.forget_prepared(rec.txid)
                continue
            txn = Transaction(rec.txid, pid, rec.key, rec.op, rec.value, self.clock.seconds(),
                              rec.ts, pid_text=rec.pid)
            txn.new_version = rec.new_version
            txn.checksum = rec.checksum
            txn.participants = rec.participants
            txn.state = TxnState.PREPARED
            # It may have answered "prepared" to a termination query before it stopped:
            # only termination decides now, never a coordinator's ABORT.
            txn.queried = True
            if not self.locks.try_acquire(txn.lock_key, txn.txid, rec.ts):
                self.log.error("two prepared transactions recorded for {key!r} in {pid}; "
                               "keeping {txid} unlocked for termination", key=rec.key[:64],
                               pid=rec.pid, txid=rec.txid)
            self.active[txn.txid] = txn
            txn.due_at = self.clock.seconds() + resolve_after_s
            txn.timer = self.clock.callLater(resolve_after_s, self.on_deadline, txn)
            n += 1
        return n

    # -- phase two -----------------------------------------------------------------------

    def commit(self, txid: TxnId, reply: Reply | None = None, to: Any = None) -> Any:
        """Apply a prepared transaction; the answer comes once the write is durable (with
        ``reply``: ``LATER``, then ``reply(to, ...)``, as for ``vote``)."""
        txn = self.active.get(txid)
        if txn is None:
            past = self.decided.get(txid)
            if past is not None and past[0] is TxnState.COMMITTED:
                return {"version": past[1]}
            if past is not None:
                raise UnknownTransaction(f"transaction {txid} was aborted here")
            raise UnknownTransaction(f"transaction {txid} is unknown here")
        if txn.state is TxnState.COMMITTING:        # a repeated COMMIT: same answer
            waiter: Deferred[int] = Deferred()
            txn.waiters.append(waiter)
            return waiter.addCallback(lambda version: {"version": version})
        if txn.state is not TxnState.PREPARED:
            raise UnknownTransaction(f"transaction {txid} is {txn.state.value}, "
                                     "not prepared")
        if failpoints.ARMED:
            failpoints.fire("commit.before_apply")
        txn.state = TxnState.COMMITTING
        self._cancel_timer(txn)
        value = txn.value if txn.op != "remove" else None
        try:
            if reply is not None:
                if self.storage.write_then(txn.pid_text, txn.key, value, txn.new_version,
                                           txn.txid, self._applied, (txn, reply, to),
                                           txn.checksum):
                    return LATER
                d = None
            else:
                d = self.storage.write(txn.pid_text, txn.key, value, txn.new_version,
                                       txn.txid, txn.checksum)
        except Exception as e:
            # Nothing was staged (the key could not be read): prepared as before.
            failed = self._commit_failed(Failure(e), txn)
            if self.on_unreadable is not None and unreadable(e):
                raise self.on_unreadable(txn.pid_text, e) from None
            if isinstance(failed.value, StorageFull):
                raise failed.value from None
            raise
        if d is None:
            return self._committed(None, txn)       # memory durability: no wait
        return d.addCallbacks(self._committed, self._commit_failed, callbackArgs=(txn,),
                              errbackArgs=(txn,))

    def _applied(self, ctx: tuple[Transaction, Reply, Any],
                 error: BaseException | None) -> None:
        """The COMMIT's write is durable (or could not be made so): answer it."""
        txn, reply, to = ctx
        try:
            if error is not None:
                result: Any = self._commit_failed(Failure(error), txn).value
            else:
                result = self._committed(None, txn)
        except Exception as e:  # noqa: BLE001 -- a failpoint's error, answered as such
            result = e
        reply(to, result)

    def _committed(self, _: None, txn: Transaction) -> dict[str, int]:
        # The write's durable record settled the vote too (``storage.write(..., txid)``).
        self.locks.release(txn.lock_key, txn.txid)
        self._forget(txn, TxnState.COMMITTED)
        self.metrics.inc("commits_total")
        if txn.op == "replay":
            self.metrics.inc("dr_replays", outcome="applied")
        waiters, txn.waiters = txn.waiters, []
        for w in waiters:
            w.callback(txn.new_version)
        if failpoints.ARMED:
            failpoints.fire("commit.after_apply_before_ack")
        return {"version": txn.new_version}

    def _commit_failed(self, failure: Failure, txn: Transaction) -> Failure:
        """The write did not become durable: the lock stays and the transaction stays
        prepared, so the coordinator (or termination) can ask again."""
        txn.state = TxnState.PREPARED
        if txn.timer is None:     # commit() cancelled it: keep termination as the backstop
            txn.timer = self.clock.callLater(self.txn_deadline_s, self.on_deadline, txn)
        self.metrics.inc("commit_failures_total")
        self._failures.error("commit of {txid} failed to persist: {error}", txid=txn.txid,
                             error=repr(failure.value))
        error = failure.value
        if error is not None and not isinstance(error, DDSError) and self.full(error):
            # Prepared still: the brick steps out of the RG, and the coordinator, seeing
            # StorageFull, finishes without it once it has (lib/coordinator.py).
            failure = Failure(StorageFull(f"could not apply the commit: {failure.value}"))
        waiters, txn.waiters = txn.waiters, []
        for w in waiters:
            w.errback(failure)
        return failure

    def abort(self, txid: TxnId) -> dict[str, Any]:
        txn = self.active.get(txid)
        if txn is None:
            past = self.decided.get(txid)
            if past is not None and past[0] is TxnState.COMMITTED:
                raise InvalidRequest(f"transaction {txid} was committed here")
            self._remember(txid, TxnState.ABORTED, 0)   # refuse a late PREPARE
            return {}
        if txn.state in (TxnState.COMMITTING,):
            raise InvalidRequest(f"transaction {txid} is committing here")
        if txn.state is TxnState.PREPARING:
            # prepare() sees this once it has the lock, or once its record is written.
            txn.state = TxnState.ABORTED
            return {}
        self.storage.forget_prepared(txid)
        self.locks.release(txn.lock_key, txid)
        self._forget(txn, TxnState.ABORTED)
        self.metrics.inc("aborts_total")
        return {}

    def state_of(self, txid: TxnId) -> TxnState | None:
        txn = self.active.get(txid)
        if txn is not None:
            return txn.state
        past = self.decided.get(txid)
        return past[0] if past is not None else None

    def forget_partition(self, pid: PartitionId) -> int:
        """Drop every transaction of ``pid`` without deciding it: the replica is about to
        be replaced by a copy from an active member, whose data carries the outcome.
        Nothing is remembered as decided, so this brick never answers a termination
        query with a guess (it is not an active member while it recovers anyway)."""
        dropped = [t for t in self.active.values() if t.pid == pid]
        for txn in dropped:
            self._cancel_timer(txn)
            self.storage.forget_prepared(txn.txid)
            self.locks.release(txn.lock_key, txn.txid)
            self.active.pop(txn.txid, None)
        if dropped:
            self.log.warn("dropped {n} transactions of {pid}: its replica is replaced by "
                          "a copy", n=len(dropped), pid=str(pid))
            if self._quiet_waiters:
                self._schedule_quiet_check()
        return len(dropped)

    # -- write fence (recovery, DESIGN §7; bricks/writefence.py) -----------------------

    DRAIN_S = WriteFence.DRAIN_S
    DRAIN_ASK_S = WriteFence.DRAIN_ASK_S

    def fence(self, pids: Iterable[PartitionId]) -> None:
        """Refuse new PREPAREs for ``pids`` until as many ``unfence`` calls lift it."""
        self.writes.fence(pids)

    def unfence(self, pids: Iterable[PartitionId]) -> None:
        self.writes.unfence(pids)

    def busy(self, pids: Iterable[PartitionId]) -> int:
        """How many active transactions touch ``pids``."""
        return self.writes.busy(pids)

    async def quiesce(self, pids: Iterable[PartitionId], timeout_s: float) -> bool:
        """Wait until no active transaction touches ``pids`` (False after ``timeout_s``)."""
        return await self.writes.quiesce(pids, timeout_s)

    # -- bookkeeping ---------------------------------------------------------------------

    def _forget(self, txn: Transaction, outcome: TxnState) -> None:
        self._cancel_timer(txn)
        txn.state = outcome
        self.active.pop(txn.txid, None)
        self._remember(txn.txid, outcome, txn.new_version)
        if self._quiet_waiters:
            self._schedule_quiet_check()

    def _remember(self, txid: TxnId, outcome: TxnState, version: int) -> None:
        self.decided[txid] = (outcome, version)
        while len(self.decided) > DECIDED_MEMORY:
            self.decided.popitem(last=False)

    def deadline_passed(self, txn: Transaction, now: float | None = None) -> bool:
        """Whether ``txn``'s deadline has passed (``Deadlines.passed``)."""
        return self.deadlines.passed(txn, now)

    def in_doubt(self) -> list[Transaction]:
        """Prepared transactions past their deadline (``Deadlines.in_doubt``)."""
        return self.deadlines.in_doubt()


__all__ = ["DECIDED_MEMORY", "Participant", "Reply", "Transaction", "TxnState"]
