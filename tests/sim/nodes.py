"""One simulated process's view of the shared simulated clock: freeze, thaw and kill.

Every brick and every client of the simulation gets its own :class:`NodeReactor`, which it
uses as its reactor (``callLater``/``seconds``/``getDelayedCalls``).  All of them schedule
on one ``twisted.internet.task.Clock``, so timers of all processes still run in one
deterministic order, but each process can be stopped on its own:

* :meth:`NodeReactor.freeze` models ``kill -STOP``: a timer of the process that comes due
  while it is frozen does not run; it runs (late, in due order) at :meth:`thaw`.  Together
  with ``MemoryNetwork.pause(name, stop_process=True)`` (no bytes delivered, no connection
  accepted or lost) nothing of the process runs while it is frozen; time keeps passing, so
  its deadlines are all past due when it wakes up, as after a real ``SIGCONT``.
* :meth:`NodeReactor.kill` models ``kill -9``: every pending timer is cancelled and later
  ``callLater`` calls are ignored, so the dead process's leftovers never run again.

The delayed calls handed out are :class:`NodeCall` objects, so that ``active()`` and
``cancel()`` stay right for a timer held back by a freeze.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import Clock
from zope.interface import implementer

__all__ = ["NodeCall", "NodeReactor"]


@implementer(IDelayedCall)
class NodeCall:
    """A delayed call of one process: pending on the clock, held by a freeze, or done."""

    def __init__(self, node: NodeReactor, fn: Callable[..., Any], args: tuple[Any, ...],
                 kw: dict[str, Any]) -> None:
        self._node = node
        self._fn = fn
        self._args = args
        self._kw = kw
        self._dc: IDelayedCall | None = None
        self._held = False
        self.called = False
        self.cancelled = False

    def _fire(self) -> None:
        if self._node.dead:
            self.cancelled = True
            return
        if self._node.frozen:
            self._held = True
            self._node._held.append(self)
            return
        self._run()

    def _run(self) -> None:
        self._held = False
        self.called = True
        self._node._pending.pop(self, None)
        self._fn(*self._args, **self._kw)

    def getTime(self) -> float:
        if self._dc is not None and not self._held:
            return self._dc.getTime()
        return self._node.seconds()

    def active(self) -> bool:
        return not (self.called or self.cancelled)

    def cancel(self) -> None:
        if self.cancelled:
            raise AlreadyCancelled()
        if self.called:
            raise AlreadyCalled()
        self.cancelled = True
        self._node._pending.pop(self, None)
        if self._held:
            self._held = False
            self._node._held.remove(self)
        elif self._dc is not None and self._dc.active():
            self._dc.cancel()

    def delay(self, secondsLater: float) -> None:
        if not self.active() or self._dc is None or self._held:
            raise AlreadyCalled()
        self._dc.delay(secondsLater)
        self._node.clock._sortCalls()

    def reset(self, secondsFromNow: float) -> None:
        if not self.active() or self._dc is None or self._held:
            raise AlreadyCalled()
        self._dc.reset(secondsFromNow)
        self._node.clock._sortCalls()

    def __repr__(self) -> str:
        state = ("held" if self._held else "called" if self.called
                 else "cancelled" if self.cancelled else "pending")
        return f"<NodeCall {self._node.name} {getattr(self._fn, '__qualname__', self._fn)} {state}>"


@implementer(IReactorTime)
class NodeReactor:
    """The reactor of one simulated process, over the simulation's shared ``Clock``."""

    def __init__(self, clock: Clock, name: str) -> None:
        self.clock = clock
        self.name = name
        self.frozen = False
        self.dead = False
        #: Timers not yet run or cancelled, in creation order (a dict as an ordered set).
        self._pending: dict[NodeCall, None] = {}
        #: Timers that came due while frozen, in the order they came due.
        self._held: list[NodeCall] = []

    def seconds(self) -> float:
        return self.clock.seconds()

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any,
                  **kw: Any) -> NodeCall:
        call = NodeCall(self, callable, args, kw)
        if self.dead:
            call.cancelled = True       # a dead process schedules nothing
            return call
        self._pending[call] = None
        call._dc = self.clock.callLater(delay, call._fire)
        return call

    def getDelayedCalls(self) -> Sequence[IDelayedCall]:
        return list(self._pending)

    # -- faults --------------------------------------------------------------------------

    def freeze(self) -> None:
        """Stop running this process's timers (they are held, not lost)."""
        self.frozen = True

    def thaw(self) -> None:
        """Run the timers held by the freeze, in the order they came due, then go on."""
        self.frozen = False
        while self._held and not self.frozen and not self.dead:
            call = self._held.pop(0)
            call._run()

    def kill(self) -> None:
        """The process is gone: cancel every timer; ignore any later ``callLater``."""
        self.dead = True
        self._held.clear()
        for call in list(self._pending):
            if call._dc is not None and call._dc.active():
                call._dc.cancel()
            call.cancelled = True
        self._pending.clear()

    @property
    def held(self) -> int:
        return len(self._held)
