"""When a prepared transaction's deadline comes (DESIGN §4): one timer for all of them.

A YES vote arms its transaction's deadline (``wake``); at the deadline the transaction
goes to ``on_deadline`` (termination asks the other members, ``Terminator.later``).  One
timer, at the earliest deadline of the prepared transactions, serves them all instead of
a timer per transaction armed and cancelled on every write.  A transaction may also have
a timer of its own (after a restart, a retry of termination, a failed commit), cancelled
with the deadline (``cancel``).
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from dds.messages import TxnId
from dds.metrics import Metrics

from dds.bricks.txn import Transaction, TxnState


class Deadlines:
    log = Logger()

    def __init__(self, clock: IReactorTime, metrics: Metrics,
                 active: dict[TxnId, Transaction],
                 on_deadline: Callable[[Transaction], None] | None) -> None:
        self.clock = clock
        self.metrics = metrics
        #: The participant's active transactions (the same dict).
        self.active = active
        self.on_deadline = on_deadline or self.report
        self._sweep: IDelayedCall | None = None
        self._sweep_at = float("inf")

    def cancel(self, txn: Transaction) -> None:
        """``txn`` is decided (or dropped): no deadline, no timer of its own."""
        txn.wake_at = None
        if txn.timer is not None:
            if txn.timer.active():
                txn.timer.cancel()
            txn.timer = None

    def wake(self, txn: Transaction, at: float) -> None:
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

    def report(self, txn: Transaction) -> None:
        """Default deadline action: report the in-doubt transaction.  The termination
        protocol (asking the other members) replaces this through ``on_deadline``."""
        txn.timer = None
        self.metrics.inc("txn_in_doubt_total")
        self.log.warn("transaction {txid} on {pid} is past its deadline and still "
                      "prepared", txid=txn.txid, pid=str(txn.pid))

    def passed(self, txn: Transaction, now: float | None = None) -> bool:
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
                if t.state is TxnState.PREPARED and self.passed(t, now)]


__all__ = ["Deadlines"]
