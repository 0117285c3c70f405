"""Small Deferred helpers shared by bricks and the library (which may not import each
other, DESIGN §1)."""

from __future__ import annotations

from collections.abc import Coroutine, Iterable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.interfaces import IReactorTime


def gather(calls: Iterable[Deferred[Any] | Coroutine[Any, Any, Any]]
           ) -> Deferred[list[Any]]:
    """Run them all at once (coroutines are started); results in order, the exception in
    place of each failure (every failure is consumed)."""
    d = DeferredList([ensureDeferred(c) for c in calls], consumeErrors=True)
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
    """A Deferred that fires after ``seconds`` on ``clock``; cancelling it cancels the
    timer."""
    d: Deferred[None] = Deferred(lambda _: call.cancel() if call.active() else None)
    call = clock.callLater(seconds, d.callback, None)
    return d
