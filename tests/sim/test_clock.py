"""``SimClock`` runs pending calls in exactly ``Clock``'s order: the same random
schedules of ``callLater``, ``reset``, ``delay``, ``cancel`` and ``advance`` (calls that
schedule, reset and cancel others when they run, many due at the same instant) give the
same trace on both."""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.internet.task import Clock

from tests.sim.clock import SimClock, earliest


def _trace(clock: Clock, seed: int) -> list[Any]:
    rng = random.Random(seed)
    trace: list[Any] = []
    calls: list[Any] = []

    def fired(n: int) -> None:
        trace.append(("ran", n, clock.seconds()))
        for _ in range(rng.randrange(3)):          # a call's own scheduling work
            act(len(trace))

    def act(n: int) -> None:
        live = [c for c in calls if c.active()]
        what = rng.random()
        if what < 0.5 or not live:
            # Coarse times: many calls come due together, where order is decided by
            # the sort's stability.
            calls.append(clock.callLater(rng.choice([0, 0.5, 1, 1, 2]),
                                         fired, n * 10 + len(calls)))
        elif what < 0.7:
            rng.choice(live).reset(rng.choice([0, 0.5, 1, 3]))
        elif what < 0.8:
            rng.choice(live).delay(rng.choice([-1, 0.5, 2]))
        else:
            rng.choice(live).cancel()

    for step in range(300):
        act(step)
        if rng.random() < 0.3:
            clock.advance(rng.choice([0, 0.5, 1]))
        trace.append(("next", earliest(clock)))
    clock.advance(100)
    return trace


@pytest.mark.parametrize("seed", range(30))
def test_a_sim_clock_runs_calls_in_the_order_a_twisted_clock_does(seed: int) -> None:
    expected = _trace(Clock(), seed)
    assert sum(1 for t in expected if t[0] == "ran") > 100
    assert _trace(SimClock(), seed) == expected
