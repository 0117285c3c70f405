"""Unit tests of dds.bricks.locks (wait-die), with time from a Clock."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from dds.bricks.locks import LockTable
from dds.errors import Locked, Timeout

OLD, MID, YOUNG = (1, 0), (2, 0), (3, 0)  # start timestamps: smaller = older
A, B, C = (10, 1), (20, 1), (30, 1)  # transaction ids


def outcome(d: Deferred[Any]) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def failed_with(got: list[Any], error: type[Exception]) -> bool:
    return len(got) == 1 and isinstance(got[0], Failure) and got[0].check(error) is not None


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def locks(clock: Clock) -> LockTable:
    return LockTable(clock)


def test_free_key_is_acquired_at_once(locks: LockTable) -> None:
    assert outcome(locks.acquire(b"k", A, MID, 1.0)) == [None]
    assert locks.holder(b"k") == A and len(locks) == 1


def test_reacquire_by_holder_is_a_no_op(locks: LockTable) -> None:
    locks.acquire(b"k", A, MID, 1.0)
    assert outcome(locks.acquire(b"k", A, MID, 1.0)) == [None]
    assert len(locks) == 1


def test_younger_requester_dies_with_locked(locks: LockTable, clock: Clock) -> None:
    locks.acquire(b"k", A, MID, 1.0)
    got = outcome(locks.acquire(b"k", B, YOUNG, 1.0))
    assert failed_with(got, Locked)
    assert str(A) in got[0].value.message
    assert clock.getDelayedCalls() == []


def test_equally_old_requester_dies(locks: LockTable) -> None:
    locks.acquire(b"k", A, MID, 1.0)
    assert failed_with(outcome(locks.acquire(b"k", B, MID, 1.0)), Locked)


def test_older_requester_waits_and_gets_lock_on_release(locks: LockTable, clock: Clock) -> None:
    locks.acquire(b"k", A, MID, 1.0)
    got = outcome(locks.acquire(b"k", B, OLD, 1.0))
    assert got == []
    locks.release(b"k", A)
    assert got == [None] and locks.holder(b"k") == B
    assert clock.getDelayedCalls() == []


def test_oldest_waiter_is_served_first(locks: LockTable) -> None:
    locks.acquire(b"k", A, (9, 0), 1.0)
    mid = outcome(locks.acquire(b"k", B, (5, 0), 1.0))
    oldest = outcome(locks.acquire(b"k", C, (1, 0), 1.0))
    locks.release(b"k", A)
    assert oldest == [None] and locks.holder(b"k") == C
    assert failed_with(mid, Locked)  # younger than the new holder: dies (wait-die)


def test_wait_times_out_with_locked(locks: LockTable, clock: Clock) -> None:
    locks.acquire(b"k", A, MID, 1.0)
    got = outcome(locks.acquire(b"k", B, OLD, 1.0))
    clock.advance(0.999)
    assert got == []
    clock.advance(0.001)
    assert failed_with(got, Locked) and "timed out" in got[0].value.message
    locks.release(b"k", A)
    assert locks.holder(b"k") is None and len(locks) == 0


def test_zero_timeout_fails_at_once(locks: LockTable, clock: Clock) -> None:
    locks.acquire(b"k", A, MID, 1.0)
    assert failed_with(outcome(locks.acquire(b"k", B, OLD, 0)), Locked)
    assert clock.getDelayedCalls() == []


def test_cancelled_wait_leaves_the_queue(locks: LockTable, clock: Clock) -> None:
    locks.acquire(b"k", A, MID, 1.0)
    d = locks.acquire(b"k", B, OLD, 1.0)
    got = outcome(d)
    d.cancel()
    assert failed_with(got, CancelledError) and clock.getDelayedCalls() == []
    locks.release(b"k", A)
    assert locks.holder(b"k") is None


def test_release_by_non_holder_is_a_no_op(locks: LockTable) -> None:
    locks.release(b"k", A)
    locks.acquire(b"k", A, MID, 1.0)
    locks.release(b"k", B)
    assert locks.holder(b"k") == A


def test_keys_are_independent(locks: LockTable) -> None:
    locks.acquire(b"k", A, MID, 1.0)
    assert outcome(locks.acquire(b"j", B, YOUNG, 1.0)) == [None]
    assert len(locks) == 2


def test_wait_free_fires_at_once_when_not_held(locks: LockTable) -> None:
    assert outcome(locks.wait_free(b"k", 1.0)) == [None]


def test_wait_free_fires_on_release(locks: LockTable, clock: Clock) -> None:
    locks.acquire(b"k", A, MID, 1.0)
    got = outcome(locks.wait_free(b"k", 1.0))
    assert got == []
    locks.release(b"k", A)
    assert got == [None] and clock.getDelayedCalls() == []


def test_wait_free_times_out_with_timeout(locks: LockTable, clock: Clock) -> None:
    locks.acquire(b"k", A, MID, 1.0)
    got = outcome(locks.wait_free(b"k", 0.5))
    clock.advance(0.5)
    assert failed_with(got, Timeout)
    locks.release(b"k", A)
    assert clock.getDelayedCalls() == []


def test_no_delayed_calls_left_after_everything_released(locks: LockTable, clock: Clock) -> None:
    locks.acquire(b"k", A, YOUNG, 5.0)
    locks.acquire(b"j", A, YOUNG, 5.0)
    waiters = [outcome(locks.acquire(b"k", B, MID, 5.0)), outcome(locks.acquire(b"k", C, OLD, 5.0)),
               outcome(locks.acquire(b"j", B, MID, 5.0))]
    readers = [outcome(locks.wait_free(b"k", 5.0)), outcome(locks.wait_free(b"j", 5.0))]
    assert len(clock.getDelayedCalls()) == 5
    locks.release(b"k", A)
    locks.release(b"j", A)
    locks.release(b"k", C)
    locks.release(b"j", B)
    assert clock.getDelayedCalls() == [] and len(locks) == 0
    assert readers == [[None], [None]]
    assert waiters[1] == [None] and waiters[2] == [None] and failed_with(waiters[0], Locked)


def test_try_acquire_takes_a_free_lock_without_waiting(clock: Clock) -> None:
    table = LockTable(clock)
    assert table.try_acquire("k", (1, 1), (5, 0))
    assert table.holder("k") == (1, 1)
    assert table.try_acquire("k", (1, 1), (5, 0))      # the holder again: still its lock


def test_try_acquire_refuses_a_held_lock_and_leaves_it_alone(clock: Clock) -> None:
    table = LockTable(clock)
    assert table.try_acquire("k", (1, 1), (5, 0))
    assert not table.try_acquire("k", (2, 1), (1, 0))   # even an older txn must acquire()
    assert table.holder("k") == (1, 1)
    assert clock.getDelayedCalls() == []
