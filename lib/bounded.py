"""Bounded-staleness reads in the library (DESIGN §3): ``get(key, consistency=Bounded(s))``.

Any active replica that can prove its copy is at most ``s`` seconds old answers
(``dds.bricks.bounded``): it does not wait on a prepared key and may answer while its
lease has lapsed for less than ``s``.  So a bounded read keeps answering while an RG is
reconfiguring or a replica is paused, which a linearizable read cannot.  Every reply says
how stale it may be; a reply staler than asked is never returned, whoever sent it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs

from dds.errors import (ConnectionLost, InternalError, InvalidRequest, NotServing,
                        ReplicaDamaged, StaleMap, Timeout, Unavailable)
from dds.rpc import RPCProtocol

from dds.lib.routing import pick_replica

if TYPE_CHECKING:
    from dds.lib.client import DDSClient, GetResult

#: The default, and the only other choice: wait for a prepared key, need a valid lease.
LINEARIZABLE = "linearizable"
#: A replica's answer that says "not me, try another" for a bounded read.
_NEXT_REPLICA = (NotServing, ReplicaDamaged, InternalError, Timeout, ConnectionLost,
                 Unavailable)


@attrs.frozen
class Bounded:
    """Read consistency of one ``get``: a value that was current at some moment no earlier
    than ``max_staleness`` seconds before the call."""

    max_staleness: float = attrs.field()

    @max_staleness.validator
    def _check(self, _a: Any, value: Any) -> None:
        if type(value) not in (int, float) or not 0 < value <= 3600 or math.isnan(value):
            raise InvalidRequest(f"Bounded(max_staleness) must be seconds in (0, 3600], "
                                 f"not {value!r:.40}")

    @property
    def max_stale_ms(self) -> int:
        return max(1, int(self.max_staleness * 1000))


def check_consistency(consistency: Any) -> Bounded | None:
    """None for a linearizable read, the bound for a bounded one; anything else is an
    ``InvalidRequest`` naming the choices."""
    if consistency is None or consistency == LINEARIZABLE:
        return None
    if isinstance(consistency, Bounded):
        return consistency
    raise InvalidRequest(f"consistency must be 'linearizable' or Bounded(seconds), not "
                         f"{consistency!r:.60}")


async def bounded_get(client: "DDSClient", key: bytes, timeout: float,
                      bound: Bounded) -> "GetResult":
    """Try the replicas (least loaded first) until one proves a recent enough copy."""
    from dds.lib.client import GetResult
    start = client.clock.seconds()
    deadline = start + timeout
    tried: set[str] = set()
    attempt = 0
    last = ""
    while True:
        route = await client._route(key, deadline)
        brick = pick_replica(route, tried, client.connections.open, client.rng)
        if brick is None:
            tried.clear()
            attempt += 1
            await client._backoff(attempt, deadline, f"no replica of {route.pid_text} "
                                  f"could answer within {bound.max_staleness:g}s of "
                                  f"staleness ({last})")
            continue
        body = route.request(key)
        body["max_stale_ms"] = bound.max_stale_ms
        conn: RPCProtocol | None = None
        try:
            conn = await client._connect(brick.address, brick.port)
            reply = await conn.call("bget", body,
                                    timeout=max(deadline - client.clock.seconds(), 0.001))
            stale_ms = int(reply["stale_ms"])
            if stale_ms > bound.max_stale_ms:    # a brick that does not keep its word
                raise NotServing(f"{brick.id} answered {stale_ms} ms stale, more than "
                                 f"the {bound.max_stale_ms} ms asked for")
            return GetResult(reply["value"], reply["version"], stale_ms / 1000.0)
        except StaleMap as e:
            attempt += 1
            await client._repair(e, conn, deadline)
        except _NEXT_REPLICA as e:
            tried.add(brick.id)
            last = f"{brick.id}: {e.message}"
            if client.clock.seconds() >= deadline:
                raise Timeout(f"bounded get timed out after {timeout:g}s: {last}") from None
