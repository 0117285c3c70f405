"""The library's retry backoff is capped, so writers resume within ~0.3 s of a fence
lifting however many times they were refused (the integration test in test_failures
shows it on real bricks; this is the bound itself)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from dds.errors import Timeout
from dds.lib.client import DDSClient


def scheduled_delay(attempt: int, seed: int) -> float:
    clock = Clock()
    owner = SimpleNamespace(rng=random.Random(seed), clock=clock)
    d = Deferred.fromCoroutine(DDSClient._backoff(owner, attempt, 1e9, "test"))  # type: ignore[arg-type]
    [call] = clock.getDelayedCalls()
    delay = call.getTime()
    clock.advance(delay)
    assert d.called
    return delay


@pytest.mark.parametrize("attempt", [0, 3, 7, 8, 20, 1000])
def test_a_retry_never_waits_more_than_0_3_s(attempt: int) -> None:
    assert max(scheduled_delay(attempt, seed) for seed in range(50)) <= 0.3


def test_the_first_retries_are_a_few_milliseconds() -> None:
    assert max(scheduled_delay(0, seed) for seed in range(50)) <= 0.003


def test_a_retry_past_the_deadline_gives_up_with_timeout() -> None:
    owner = SimpleNamespace(rng=random.Random(1), clock=Clock())
    d = Deferred.fromCoroutine(DDSClient._backoff(owner, 7, 0.01, "fenced"))  # type: ignore[arg-type]
    failures: list[BaseException] = []
    d.addErrback(lambda f: failures.append(f.value))
    assert isinstance(failures[0], Timeout) and "fenced" in failures[0].message
