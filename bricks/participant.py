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
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from dds import failpoints
from dds.errors import (DDSError, Exists, InternalError, InvalidRequest, Locked,
                        Recovering, ReplicaDamaged, StorageFull, UnknownTransaction,
                        VersionMismatch)
from dds.messages import Prepare, TxnId
from dds.metrics import Metrics
from dds.partition import PartitionId
from dds.ratelimit import LogLimiter
from dds.rpc import LATER

from dds.bricks.damage import unreadable
from dds.bricks.locks import LockTable
from dds.bricks.rowcheck import row_checksum
from dds.bricks.storage import PreparedRecord, Storage

#: How many decided transactions are remembered for repeated COMMIT/ABORT answers.
DECIDED_MEMORY = 100_000

#: Where a vote or a commit that finishes later is answered without a Deferred:
#: ``reply(to, result)`` with the reply body or the exception (see ``dds.rpc.LATER``).
Reply = Callable[[Any, Any], None]


class TxnState(enum.Enum):
    PREPARING = "preparing"
    PREPARED = "prepared"
    COMMITTING = "committing"
    COMMITTED = "committed"
    ABORTED = "aborted"


class Transaction:
    __slots__ = ("txid", "pid", "pid_text", "key", "op", "value", "new_version", "state",
                 "timer", "wake_at", "prepared_at", "due_at", "waiters", "queried", "ts",
                 "expected_version", "timeout_ms", "lock_key", "checksum", "origin",
                 "asked_at", "participants")

    def __init__(self, txid: TxnId, pid: PartitionId, key: bytes, op: str,
                 value: bytes | None, now: float, ts: tuple[int, int] = (0, 0),
                 expected_version: int | None = None, timeout_ms: int = 0,
                 pid_text: str | None = None) -> None:
        self.txid = txid
        self.pid = pid
        self.pid_text = pid_text if pid_text is not None else str(pid)
        self.key = key
        self.op = op
        self.value = value
        self.ts = ts
        self.expected_version = expected_version
        self.timeout_ms = timeout_ms
        #: The key's lock: by partition id text, whose hash Python keeps.
        self.lock_key = (self.pid_text, key)
        self.new_version = 0
        #: The staged row's checksum (``bricks/rowcheck.py``), computed once the vote
        #: fixes ``new_version``; it goes with the row into the log and the file.
        self.checksum: int | None = None
        self.state = TxnState.PREPARING
        #: A timer armed for this transaction alone (after a restart, a retry of
        #: termination, a failed commit); the common deadline is ``wake_at``.
        self.timer: IDelayedCall | None = None
        #: When the participant's deadline sweep hands it to ``on_deadline`` (None: not
        #: armed); one timer serves every prepared transaction.
        self.wake_at: float | None = None
        self.prepared_at = now
        #: When termination first becomes due (the deadline timer's time); None until the
        #: YES vote is recorded.  Later retries of termination do not move it.
        self.due_at: float | None = None
        #: COMMITs that arrived while the commit was being made durable (a retry).
        self.waiters: list[Deferred[int]] = []
        #: Termination has seen this member prepared (it answered a query, or started its
        #: own termination): from then on the members decide, and a coordinator's ABORT is
        #: refused, or some member could commit by "all prepared" while others abort.
        self.queried = False
        #: The connection the PREPARE came on (None when unknown): once it is closed,
        #: the coordinator is likely gone, and termination need not wait for the deadline.
        self.origin: Any = None
        #: When a member whose key this transaction holds last asked the others early.
        self.asked_at: float | None = None
        #: The members the coordinator sent the PREPARE to: the ones termination asks
        #: (DESIGN §4).  Empty for a vote recorded before the list was kept.
        self.participants: tuple[str, ...] = ()


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
        self.on_deadline = on_deadline or self._deadline_passed
        #: Called with a key's lock when a PREPARE or a read finds it held by another
        #: transaction (termination may learn its outcome early: ``Terminator.nudge``).
        self.on_blocked: Callable[[Any], None] = lambda lock_key: None
        self.active: dict[TxnId, Transaction] = {}
        self.decided: OrderedDict[TxnId, tuple[TxnState, int]] = OrderedDict()
        #: Write fence of recovery (DESIGN §7): partition -> number of copy sessions
        #: fencing it.  A count, so two recoveries of one RG do not lift each other's.
        #: Empty (falsy) almost always, which keeps the check in ``prepare`` free.
        self.fenced: dict[PartitionId, int] = {}
        #: ``quiesce`` calls waiting for their partitions' transactions to resolve.
        self._quiet_waiters: list[tuple[frozenset[PartitionId], Deferred[bool]]] = []
        self._quiet_check: IDelayedCall | None = None
        #: The deadline sweep: one timer, at the earliest ``wake_at`` of the prepared
        #: transactions, instead of a timer per transaction armed and cancelled each time.
        self._sweep: IDelayedCall | None = None
        self._sweep_at = float("inf")
        #: A read or write of a partition whose file turned out unreadable
        #: (``bricks/damage.py``): ``on_unreadable(pid, error)`` sets it aside and returns
        #: the error to answer (``ReplicaDamaged``).
        self.on_unreadable: Callable[[str, BaseException], DDSError] | None = None
        #: A vote or write could not be made durable: ``full(error)`` is true when the
        #: brick's disk is full (``bricks/diskspace.py``), which it then handles; the
        #: caller hears ``StorageFull``.
        self.full: Callable[[BaseException], bool] = lambda error: False
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
            if known.state is TxnState.PREPARED:
                return {"version": known.new_version - 1}   # a repeated PREPARE
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
        txn.new_version = current.version + 1
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
        txn.due_at = due = self.clock.seconds() + deadline
        self._wake(txn, due)
        self.metrics.inc("prepare_yes_total")
        if failpoints.ARMED:
            failpoints.fire("prepare.after_vote")
        return {"version": txn.new_version - 1}

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

    # -- write fence (recovery, DESIGN §7) -----------------------------------------------

    def fence(self, pids: Iterable[PartitionId]) -> None:
        """Refuse new PREPAREs for ``pids`` with ``Recovering`` until as many ``unfence``
        calls lift it (each copy session fences and unfences once)."""
        for pid in pids:
            self.fenced[pid] = self.fenced.get(pid, 0) + 1

    def unfence(self, pids: Iterable[PartitionId]) -> None:
        for pid in pids:
            n = self.fenced.get(pid, 0) - 1
            if n > 0:
                self.fenced[pid] = n
            else:
                self.fenced.pop(pid, None)

    def busy(self, pids: Iterable[PartitionId]) -> int:
        """How many active transactions (preparing, prepared or committing) touch
        ``pids``."""
        wanted = pids if isinstance(pids, (set, frozenset)) else set(pids)
        return sum(1 for t in self.active.values() if t.pid in wanted)

    #: The longest a fence's drain waits for the transactions in flight (``quiesce``).
    #: In health they finish in milliseconds; one that takes longer waits on a lost
    #: COMMIT, a dead coordinator or an unreachable member, and the early questions
    #: (``DRAIN_ASK_S``) settle the first two well within it.  Past it the fence is
    #: lifted and the split, merge or copy rolls back (its tool may try again), rather
    #: than every write to the partitions waiting out a transaction deadline.
    DRAIN_S = 1.0

    async def quiesce(self, pids: Iterable[PartitionId], timeout_s: float) -> bool:
        """Wait until no active transaction touches ``pids``: True once so, False after
        ``timeout_s`` (on the participant's clock).  Event-driven: checked whenever a
        transaction leaves ``active``, on the next reactor turn (never from inside a
        commit's callbacks, where the waiter's next step, a storage flush, would re-enter
        group commit).  Meant to follow ``fence``, which stops new ones arriving."""
        wanted = frozenset(pids)
        if not self.busy(wanted):
            return True
        d: Deferred[bool] = Deferred()
        waiter = (wanted, d)
        self._quiet_waiters.append(waiter)
        timer = self.clock.callLater(timeout_s, self._quiet_timeout, d)
        # A drain must not wait out a transaction deadline for a COMMIT that was lost or
        # a coordinator that died: ask about what it waits for, as a blocked read does.
        asking: list[IDelayedCall] = []
        asking.append(self.clock.callLater(0, self._nudge_drained, wanted, asking, d))
        try:
            return await d
        finally:
            if timer.active():
                timer.cancel()
            if asking[0].active():
                asking[0].cancel()
            if waiter in self._quiet_waiters:
                self._quiet_waiters.remove(waiter)

    #: How often a drain (``quiesce``) asks about the transactions it waits for.
    DRAIN_ASK_S = 0.1

    def _nudge_drained(self, wanted: frozenset[PartitionId], asking: list[IDelayedCall],
                       d: Deferred[bool]) -> None:
        if d.called:
            return
        for txn in list(self.active.values()):
            if txn.pid in wanted and txn.state is TxnState.PREPARED:
                self.on_blocked(txn.lock_key)
        asking[0] = self.clock.callLater(self.DRAIN_ASK_S, self._nudge_drained, wanted,
                                         asking, d)

    @staticmethod
    def _quiet_timeout(d: Deferred[bool]) -> None:
        if not d.called:
            d.callback(False)

    def _schedule_quiet_check(self) -> None:
        if self._quiet_check is None:
            self._quiet_check = self.clock.callLater(0, self._check_quiet)

    def _check_quiet(self) -> None:
        self._quiet_check = None
        for wanted, d in list(self._quiet_waiters):
            if not d.called and not self.busy(wanted):
                self._quiet_waiters.remove((wanted, d))
                d.callback(True)

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

    def _cancel_timer(self, txn: Transaction) -> None:
        txn.wake_at = None
        if txn.timer is not None:
            if txn.timer.active():
                txn.timer.cancel()
            txn.timer = None

    def _wake(self, txn: Transaction, at: float) -> None:
        """Hand ``txn`` to ``on_deadline`` at ``at`` (unless it is decided first)."""
        txn.wake_at = at
        if at < self._sweep_at:
            if self._sweep is not None and self._sweep.active():
                self._sweep.cancel()
            self._sweep_at = at
            self._sweep = self.clock.callLater(max(0.0, at - self.clock.seconds()),
                                               self._sweep_deadlines)

    def _sweep_deadlines(self) -> None:
        """Every transaction whose ``wake_at`` has come goes to ``on_deadline``; sleep
        until the next one.  Decided transactions left ``active`` already: nothing to
        cancel when a transaction ends."""
        self._sweep = None
        self._sweep_at = float("inf")
        now = self.clock.seconds()
        due = [t for t in self.active.values() if t.wake_at is not None and t.wake_at <= now]
        for txn in due:
            if txn.wake_at is not None and self.active.get(txn.txid) is txn:
                txn.wake_at = None
                self.on_deadline(txn)
        upcoming = [t.wake_at for t in self.active.values() if t.wake_at is not None]
        if upcoming:
            at = min(upcoming)
            if at < self._sweep_at:
                self._sweep_at = at
                self._sweep = self.clock.callLater(max(0.0, at - now),
                                                   self._sweep_deadlines)

    def _deadline_passed(self, txn: Transaction) -> None:
        """Default deadline action: report the in-doubt transaction.  The termination
        protocol (asking the other members) replaces this through ``on_deadline``."""
        txn.timer = None
        self.metrics.inc("txn_in_doubt_total")
        self.log.warn("transaction {txid} on {pid} is past its deadline and still "
                      "prepared", txid=txn.txid, pid=str(txn.pid))

    def deadline_passed(self, txn: Transaction, now: float | None = None) -> bool:
        """Whether ``txn``'s deadline (its first termination time) has passed: from then
        on its coordinator has given up on it, and the termination rule may decide it."""
        if txn.due_at is None:
            return False
        return (self.clock.seconds() if now is None else now) >= txn.due_at

    def in_doubt(self) -> list[Transaction]:
        """Prepared transactions past their deadline: termination has not decided them
        (yet), typically because a member could not be asked."""
        now = self.clock.seconds()
        return [t for t in self.active.values()
                if t.state is TxnState.PREPARED and self.deadline_passed(t, now)]
