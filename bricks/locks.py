"""Per-key locks for the 2PC participant, with wait-die (DESIGN §4).

A PREPARE takes the key's lock; COMMIT or ABORT releases it.  Conflicts are settled by
**wait-die** on the transaction's start timestamp (smaller = older): an older requester
waits (bounded by its timeout), a younger one dies at once with ``Locked`` and the library
retries it with backoff, keeping its timestamp so it eventually becomes the oldest.

Waits only ever go from older to younger, so no cycle of waiters can form -- across keys
and across the replicas of one key, where two transactions may each hold the lock on a
different member.  To keep that true when the holder changes, the release hands the lock
to the oldest waiter and the remaining waiters, all younger than the new holder, die with
``Locked`` right away (rather than waiting on a younger transaction, which could deadlock
with another replica until the timeout).  The oldest transaction therefore never dies and
contended keys make progress.

Reads of a prepared key wait with :meth:`LockTable.wait_free` until the holder releases.
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from dds.errors import Locked, Timeout

log = Logger()

TxnId = tuple[int, int]  # (library id, counter)
Ts = tuple[int, int]


class _Waiter:
    __slots__ = ("d", "timer", "ts", "txn")

    def __init__(self, ts: Ts, txn: TxnId, d: Deferred[None], timer: IDelayedCall) -> None:
        self.ts = ts
        self.txn = txn
        self.d = d
        self.timer = timer

    def __lt__(self, other: _Waiter) -> bool:  # queue order: oldest first
        return (self.ts, self.txn) < (other.ts, other.txn)


class _Lock:
    __slots__ = ("readers", "ts", "txn", "waiters")

    def __init__(self, txn: TxnId, ts: Ts) -> None:
        self.txn = txn
        self.ts = ts
        self.waiters: list[_Waiter] = []  # sorted, oldest first
        self.readers: list[tuple[Deferred[None], IDelayedCall]] = []


def _cancel(timer: IDelayedCall) -> None:
    if timer.active():
        timer.cancel()


class LockTable:
    """Exclusive per-key locks.  All methods run on the reactor thread."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._locks: dict[Hashable, _Lock] = {}

    def __len__(self) -> int:
        """Number of held locks."""
        return len(self._locks)

    def holder(self, key: Hashable) -> TxnId | None:
        lock = self._locks.get(key)
        return None if lock is None else lock.txn

    def try_acquire(self, key: Hashable, txn: TxnId, ts: Ts) -> bool:
        """Take the lock if it is free (or already ``txn``'s) without any Deferred: the
        uncontended case of every PREPARE.  False means: call ``acquire``."""
        lock = self._locks.get(key)
        if lock is None:
            self._locks[key] = _Lock(txn, ts)
            return True
        return lock.txn == txn

    def acquire(self, key: Hashable, txn: TxnId, ts: Ts, timeout: float) -> Deferred[None]:
        """Take the lock on ``key`` for ``txn`` (start timestamp ``ts``).

        Fires at once if free or already held by ``txn``.  If held by a younger transaction,
        waits up to ``timeout`` seconds, then errbacks ``Locked``.  If held by an older one
        (or an equally old one), errbacks ``Locked`` at once: the requester dies.
        Cancelling the returned Deferred leaves the queue.
        """
        lock = self._locks.get(key)
        if lock is None:
            self._locks[key] = _Lock(txn, ts)
            return succeed(None)
        if lock.txn == txn:
            return succeed(None)
        if not ts < lock.ts:
            return fail(Locked(f"key {key!r} is locked by older txn {lock.txn}",
                               data={"holder": list(lock.txn)}))
        if any(w.txn == txn for w in lock.waiters):
            return fail(Locked(f"txn {txn} is already waiting for key {key!r}"))
        if timeout <= 0:
            return fail(Locked(f"key {key!r} is locked by txn {lock.txn} (no wait allowed)",
                               data={"holder": list(lock.txn)}))

        def cancelled(_: Deferred[None]) -> None:
            self._leave(key, waiter)

        d: Deferred[None] = Deferred(cancelled)
        timer = self._clock.callLater(timeout, self._timed_out, key, txn, timeout)
        waiter = _Waiter(ts, txn, d, timer)
        bisect.insort(lock.waiters, waiter)
        log.debug("txn {txn} waits for {key!r} held by {holder}", txn=txn, key=key, holder=lock.txn)
        return d

    def _leave(self, key: Hashable, waiter: _Waiter) -> None:
        _cancel(waiter.timer)
        lock = self._locks.get(key)
        if lock is not None and waiter in lock.waiters:
            lock.waiters.remove(waiter)

    def _timed_out(self, key: Hashable, txn: TxnId, timeout: float) -> None:
        lock = self._locks.get(key)
        waiter = None if lock is None else next((w for w in lock.waiters if w.txn == txn), None)
        if lock is None or waiter is None:  # cannot happen: leaving the queue cancels the timer
            return
        lock.waiters.remove(waiter)
        waiter.d.errback(Locked(f"txn {txn} timed out waiting for key {key!r} after {timeout}s "
                                f"(held by txn {lock.txn})", data={"holder": list(lock.txn)}))

    def release(self, key: Hashable, txn: TxnId) -> None:
        """Release ``txn``'s lock on ``key``: readers waiting in :meth:`wait_free` proceed,
        the oldest waiter gets the lock, and the other waiters (younger than it) die."""
        lock = self._locks.get(key)
        if lock is None or lock.txn != txn:
            log.debug("txn {txn} released {key!r} which it does not hold (holder {holder})",
                      txn=txn, key=key, holder=None if lock is None else lock.txn)
            return
        readers, lock.readers = lock.readers, []
        losers: list[_Waiter] = []
        winner: _Waiter | None = None
        if lock.waiters:
            winner, *losers = lock.waiters
            lock.waiters = []
            lock.txn, lock.ts = winner.txn, winner.ts
        else:
            del self._locks[key]
        # State is final before any callback runs, so callbacks may use the table freely.
        for d, timer in readers:
            _cancel(timer)
            d.callback(None)
        if winner is not None:
            _cancel(winner.timer)
            winner.d.callback(None)
            for w in losers:
                _cancel(w.timer)
                w.d.errback(Locked(f"key {key!r} passed to older txn {winner.txn}",
                                   data={"holder": list(winner.txn)}))

    def wait_free(self, key: Hashable, timeout: float) -> Deferred[None]:
        """Fire when the current holder of ``key`` releases it (at once if none holds it);
        errback ``Timeout`` after ``timeout`` seconds.

        For a read of a prepared key: once the holder's outcome is applied, the read may go
        ahead even if a waiting writer takes the lock next, since that writer has not
        committed; so readers are not starved by a queue of writers.
        """
        lock = self._locks.get(key)
        if lock is None:
            return succeed(None)

        def cancelled(_: Deferred[None]) -> None:
            _cancel(entry[1])
            current = self._locks.get(key)
            if current is not None and entry in current.readers:
                current.readers.remove(entry)

        d: Deferred[None] = Deferred(cancelled)
        timer = self._clock.callLater(timeout, self._read_timed_out, key, d, timeout)
        entry = (d, timer)
        lock.readers.append(entry)
        return d

    def _read_timed_out(self, key: Hashable, d: Deferred[None], timeout: float) -> None:
        lock = self._locks.get(key)
        if lock is None:  # cannot happen: the release cancels the timer
            return
        lock.readers = [e for e in lock.readers if e[0] is not d]
        d.errback(Timeout(f"key {key!r} still locked by txn {lock.txn} after {timeout}s",
                          data={"holder": list(lock.txn)}))
