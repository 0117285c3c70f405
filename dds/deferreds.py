"""Small Deferred helpers shared by bricks and the library (which may not import each
other, DESIGN §1)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime


def gather(calls: list[Deferred[Any]]) -> Deferred[list[Any]]:
    """Results in order, the exception in place of each failure (every failure is
    consumed)."""
    d = DeferredList(calls, consumeErrors=True)
    return d.addCallback(lambda rs: [r if ok else r.value for ok, r in rs])


async def all_or_raise(calls: list[Deferred[Any]]) -> list[Any]:
    """Every result, in order, once all are in; the first failure is raised then (the
    others are consumed), so nothing is left running behind the caller's back."""
    results = await gather(calls)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def sleep(clock: IReactorTime, seconds: float) -> Deferred[None]:
    """A Deferred that fires after ``seconds`` on ``clock``."""
    d: Deferred[None] = Deferred()
    clock.callLater(seconds, d.callback, None)
    return d
