"""Running one admin command's coroutine on the Twisted reactor, and waiting by polling.

Every ``dds-admin`` command is a single coroutine run by :func:`run`: the reactor starts,
the coroutine runs, the reactor stops and its result (or exception) comes back to the
synchronous caller.  Waiting is always for a condition, polled at a short interval, with a
deadline (:func:`poll_until`); nothing sleeps for a fixed time hoping that is enough.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

from dds.deferreds import sleep
from dds.tools.errors import AdminError

T = TypeVar("T")

__all__ = ["AdminError", "run", "pause", "poll_until", "wait_for"]


def run(fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn(reactor)`` to completion on the global reactor (once per process)."""
    from twisted.internet import reactor

    outcome: dict[str, Any] = {}

    async def go() -> None:
        try:
            outcome["value"] = await fn(reactor)
        except BaseException as e:      # handed back to the synchronous caller
            outcome["error"] = e
        finally:
            if reactor.running:
                reactor.stop()

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(go()))
    reactor.run()
    if "error" in outcome:
        raise outcome["error"]
    if "value" not in outcome:
        raise KeyboardInterrupt     # the reactor was stopped by a signal
    value: T = outcome["value"]
    return value


def pause(reactor: Any, seconds: float) -> Deferred[None]:
    """A Deferred that fires after ``seconds``: the interval between two polls
    (``dds.deferreds.sleep``, cancellable)."""
    return sleep(reactor, seconds)


async def poll_until(reactor: Any, condition: Callable[[], Awaitable[bool] | bool],
                     timeout: float, interval: float = 0.05) -> bool:
    """Evaluate ``condition`` until it is true (True) or ``timeout`` seconds passed
    (False).  ``condition`` may be a plain function or a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return True
        if time.monotonic() >= deadline:
            return False
        await pause(reactor, min(interval, max(0.0, deadline - time.monotonic())))


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Synchronous :func:`poll_until` for code that runs no reactor (process control)."""
    import threading

    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not condition():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        tick.wait(min(interval, left))
    return True
