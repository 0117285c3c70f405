"""Renewing a write fence held for someone else (DESIGN §7, §8; issue 15: no fence
held past its bound when whoever asked for it is gone): the requests, and the holder's
side (:class:`FenceKeeper`).

A split, merge or move fences writes on a brick on behalf of a *holder*: the
``dds-admin`` process driving the job.  Without renewal the fence lapses only after
its long bound (``split.FENCE_S``, 30 s) or, for a move, not before ``dds-admin repair``:
a tool killed under the fence stopped every write to the partition for that long.  A
holder that renews says how long the fence may outlive its silence (``lapse_ms``); the
brick then lifts the fence ``lapse_ms`` after the last renewal (the job rolls back, as
for any lapse) unless its cut-over is being decided.  Renewing before the fence is taken
is allowed and sets the lapse the fence will start with.  A holder that never renews (an
older tool) keeps the long bound.

Holders: ``dds-admin split|merge|move`` (``dds.tools.split``, ``dds.tools.move``) and a
recovering brick between its ``copy_fence`` and its ``readmit`` (``dds.bricks.recovery``).
They renew every ``RENEW_S`` and ask for ``LAPSE_MS``: a holder killed, stopped or cut
off under the fence pauses writes for about two seconds.  Renewals start *before* the
fence is taken, so the fence starts with the short lapse.  A renewal that fails (a brick
restarting, a slow answer) is not an error: the steps that need the fence check that it
still holds (a split's cut-over token, a move's ``copy_fence`` after the ``outgoing``
record, a recovery's ``readmit``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

import attrs
from attrs import validators as v
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from dds.messages import Message

#: Shortest and longest silence a holder may ask for.
MIN_LAPSE_MS = 100
MAX_LAPSE_MS = 600_000

#: A brick's lapse timer firing this late means the brick itself did not run (a pause, a
#: starved process): the holder's renewals are still unread, so it gets one more lapse.
STALL_S = 1.0

_lapse = v.and_(v.instance_of(int), v.ge(MIN_LAPSE_MS), v.le(MAX_LAPSE_MS))


@attrs.frozen
class SplitFenceRenew(Message):
    """The holder of split/merge ``job`` is alive: hold this brick's fences of it
    ``lapse_ms`` longer (and take later ones with that lapse).  Reply: ``{"held":
    [which fences are held: "leader", "local"], "known": bool}``; an unknown job is no
    error (``known`` false): the job ended here, or the brick restarted and lost it."""

    TYPE: ClassVar[str] = "split_fence_renew"
    TITLE: ClassVar[str] = "split/merge (fence renewal)"
    job: str = attrs.field(validator=v.instance_of(str))
    lapse_ms: int = attrs.field(validator=_lapse)


@attrs.frozen
class CopyFenceRenew(Message):
    """The holder of copy ``session`` (a move's tool) is alive: hold the session's fence
    ``lapse_ms`` longer (and start it with that lapse if not yet taken).  Reply:
    ``{"held": bool, "known": bool}``."""

    TYPE: ClassVar[str] = "copy_fence_renew"
    TITLE: ClassVar[str] = "partition copy (fence renewal)"
    session: int = attrs.field(validator=v.and_(v.instance_of(int), v.ge(0),
                                                v.lt(1 << 63)))
    lapse_ms: int = attrs.field(validator=_lapse)


# -- the holder's side -------------------------------------------------------------------

#: Between two renewals of every fence the tool holds.
RENEW_S = 0.5
#: A brick lifts the fence this long after the last renewal it got: four renewals lost.
LAPSE_MS = 2000
#: A renewal not answered within this is skipped (the next one goes out on time).
RENEW_TIMEOUT_S = 1.0

Send = Callable[[str, Message, float], Awaitable[dict[str, Any]]]


class FenceKeeper:
    """Renews ``renewals`` (brick id, renewal message) every ``interval`` from
    :meth:`start` to :meth:`stop`."""

    log = Logger()

    def __init__(self, reactor: Any, send: Send, renewals: Sequence[tuple[str, Message]],
                 interval: float = RENEW_S) -> None:
        self.reactor = reactor
        self.send = send
        self.renewals = list(renewals)
        self.interval = interval
        self.sent = 0
        self.failed = 0
        self._in_flight: set[str] = set()
        self._loop: LoopingCall | None = None

    async def start(self) -> None:
        """One round of renewals (waited for: the bricks then know the lapse before
        the fence is taken), then one every ``interval`` in the background."""
        await self._round()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False).addErrback(
            lambda f: self.log.failure("fence renewals stopped", f))

    def stop(self) -> None:
        """No more renewals: fences still held lapse ``LAPSE_MS`` after the last one.
        Idempotent."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _tick(self) -> None:
        self._round().addErrback(lambda f: self.log.failure("fence renewal round", f))

    def _round(self) -> Deferred[Any]:
        calls = [Deferred.fromCoroutine(self._renew(brick, msg))
                 for brick, msg in self.renewals if brick not in self._in_flight]
        return DeferredList(calls, consumeErrors=True)

    async def _renew(self, brick: str, msg: Message) -> None:
        self._in_flight.add(brick)
        self.sent += 1
        try:
            await self.send(brick, msg, RENEW_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 -- best effort: the next one goes on time
            self.failed += 1
            self.log.debug("fence renewal to {brick} failed: {error}", brick=brick,
                           error=str(e))
        finally:
            self._in_flight.discard(brick)


__all__ = ["CopyFenceRenew", "FenceKeeper", "LAPSE_MS", "MAX_LAPSE_MS", "MIN_LAPSE_MS",
           "RENEW_S", "RENEW_TIMEOUT_S", "STALL_S", "SplitFenceRenew"]
