"""The participant's write fence (recovery's copies, DESIGN §7; moves, splits, merges):
partitions that take no new transaction, and the drain that waits for the ones in flight.

A fence is a count per partition, so two copy sessions fencing one partition do not lift
each other's.  ``Participant.vote`` checks ``fenced`` (the same dict) before taking any
lock; the participant tells the fence whenever a transaction leaves ``active``
(``schedule_check``), which wakes the drains waiting for their partitions.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from dds.messages import TxnId
from dds.partition import PartitionId

from dds.bricks.txn import Transaction, TxnState


class WriteFence:
    #: The longest a fence's drain waits for the transactions in flight (``quiesce``).
    #: In health they finish in milliseconds; one that takes longer waits on a lost
    #: COMMIT, a dead coordinator or an unreachable member, and the early questions
    #: (``DRAIN_ASK_S``) settle the first two well within it.  Past it the fence is
    #: lifted and the split, merge or copy rolls back (its tool may try again), rather
    #: than every write to the partitions waiting out a transaction deadline.
    DRAIN_S = 1.0
    #: How often a drain (``quiesce``) asks about the transactions it waits for.
    DRAIN_ASK_S = 0.1

    def __init__(self, clock: IReactorTime, active: dict[TxnId, Transaction],
                 on_blocked: Callable[[Any], None]) -> None:
        self.clock = clock
        #: The participant's active transactions (the same dict).
        self.active = active
        #: Asks termination about a prepared transaction's outcome (``Terminator.nudge``).
        self.on_blocked = on_blocked
        #: Partition -> number of copy sessions (or jobs) fencing it.  Empty (falsy)
        #: almost always, which keeps the participant's check free.
        self.fenced: dict[PartitionId, int] = {}
        #: ``quiesce`` calls waiting for their partitions' transactions to resolve.
        self.waiters: list[tuple[frozenset[PartitionId], Deferred[bool]]] = []
        self._check: IDelayedCall | None = None

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
        self.waiters.append(waiter)
        timer = self.clock.callLater(timeout_s, self._timeout, d)
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
            if waiter in self.waiters:
                self.waiters.remove(waiter)

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
    def _timeout(d: Deferred[bool]) -> None:
        if not d.called:
            d.callback(False)

    def schedule_check(self) -> None:
        """A transaction left ``active``: check the waiting drains on the next turn."""
        if self._check is None:
            self._check = self.clock.callLater(0, self._check_quiet)

    def _check_quiet(self) -> None:
        self._check = None
        for wanted, d in list(self.waiters):
            if not d.called and not self.busy(wanted):
                self.waiters.remove((wanted, d))
                d.callback(True)


__all__ = ["WriteFence"]
