"""The simulation's clock: ``twisted.internet.task.Clock`` that knows when its pending
calls are in order, so that it need not sort them again (nor the pump scan them all) on
every timer and every delivery.

``Clock`` keeps ``calls`` sorted by due time: ``callLater`` appends and sorts (a stable
sort), ``advance`` sorts before and after each call it runs.  A call's due time changes
only through ``reset`` and ``delay`` (which do not re-sort ``Clock.calls``: its resetter
is a no-op, and a later time only moves ``delayed_time``), and a cancelled call is
removed in place.  :class:`SimClock` marks itself unsorted in ``reset``/``delay`` and
skips a sort while it is sorted; ``callLater`` inserts after every call due at the same
time or earlier, which is where the stable sort of the appended list puts it.  So the
order of the calls, and of everything the simulation runs, is exactly ``Clock``'s; only
the work is less (the seed sweep was a third of its CPU in these sorts and scans)."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from operator import methodcaller
from typing import Any

from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock

__all__ = ["SimClock", "earliest"]

_due: Callable[[Any], float] = methodcaller("getTime")


class _Call(DelayedCall):
    """A delayed call that tells its clock when its due time changed."""

    clock: SimClock

    def reset(self, secondsFromNow: float) -> None:
        super().reset(secondsFromNow)
        self.clock.in_order = False

    def delay(self, secondsLater: float) -> None:
        super().delay(secondsLater)
        self.clock.in_order = False


class SimClock(Clock):
    def __init__(self) -> None:
        super().__init__()
        #: Whether ``calls`` is sorted by due time (nothing was reset since the last sort).
        self.in_order = True

    def callLater(self, delay: float, callable: Callable[..., object], *args: object,
                  **kw: object) -> IDelayedCall:
        dc = _Call(self.seconds() + delay, callable, args, kw, self.calls.remove,
                   lambda c: None, self.seconds)
        dc.clock = self
        if self.in_order:
            bisect.insort_right(self.calls, dc, key=_due)
        else:
            self.calls.append(dc)
            self._sortCalls()
        return dc

    def _sortCalls(self) -> None:
        if not self.in_order:
            self.calls.sort(key=_due)
            self.in_order = True


def earliest(clock: Clock) -> float | None:
    """When the first pending call of ``clock`` is due (``None``: none is)."""
    calls = clock.getDelayedCalls()
    if not calls:
        return None
    if isinstance(clock, SimClock) and clock.in_order:
        return calls[0].getTime()
    return min(c.getTime() for c in calls)
