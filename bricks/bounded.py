"""Bounded-staleness reads (DESIGN §3): how old a replica's copy of a key may be.

A linearizable read needs a valid lease and waits for a prepared key.  A bounded read
needs neither, only a proof that the copy is recent enough:

* while this brick held its lease for the RG, every committed write had it among its
  participants, so its copy was current at least until the lease ended: a lapsed lease
  makes the copy at most ``now − lease end`` old;
* a key prepared here may have been committed elsewhere (parallel commit reports success
  at the last YES vote), but not before this member voted: its last committed value was
  current at least until the PREPARE arrived, so it is at most ``now − prepared_at`` old.

The staleness is the larger of the two; a copy staler than the caller's bound is not
served (``NotServing``: the library tries another replica, never returns it).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime

from dds.errors import InvalidRequest, NotServing
from dds.messages import BoundedGet, Message

from dds.bricks.leases import Leases
from dds.bricks.participant import Participant, TxnState


def staleness(now: float, lease_until: float | None, prepared_at: float | None) -> float:
    """Seconds by which a copy may lag: 0 for a current one, ``inf`` without any lease."""
    if lease_until is None:
        return math.inf
    lag = max(0.0, now - lease_until)
    if prepared_at is not None:
        lag = max(lag, now - prepared_at)
    return lag


class BoundedReads:
    """The ``bget`` handler.  ``gate(pid, rg, version, fp)`` checks the caller's map and
    returns the partition; ``blocked()``: RGs being re-synced here (their copy is not one
    the proof above covers)."""

    def __init__(self, clock: IReactorTime, leases: Leases, participant: Participant,
                 gate: Any, read: Any, blocked: Any) -> None:
        self.clock = clock
        self.leases = leases
        self.participant = participant
        self.gate = gate
        #: ``read(pid, key)``: the row, or ``ReplicaDamaged`` for a damaged one or file.
        self.read = read
        self.blocked = blocked

    def handlers(self) -> dict[type[Message], Callable[[Any], Any]]:
        """The requests this component answers (``Brick`` dispatches them here)."""
        return {BoundedGet: self.get}

    def get(self, msg: BoundedGet) -> dict[str, Any]:
        pid = self.gate(msg.pid, msg.rg, msg.rg_version, msg.rg_fp)
        if not pid.owns(msg.key):
            raise InvalidRequest(f"key does not belong to partition {pid}")
        if msg.rg in self.blocked():
            raise NotServing(f"{msg.rg} is being re-synced here")
        now = self.clock.seconds()
        holder = self.participant.locks.holder((str(pid), msg.key))
        txn = self.participant.active.get(holder) if holder is not None else None
        prepared_at = None
        if txn is not None and txn.state in (TxnState.PREPARED, TxnState.COMMITTING):
            prepared_at = txn.prepared_at
        lag = staleness(now, self.leases.valid_until(msg.rg), prepared_at)
        if lag * 1000.0 > msg.max_stale_ms:
            what = "holds no lease" if math.isinf(lag) else f"may be {lag * 1000:.0f} ms stale"
            raise NotServing(f"this copy of {msg.rg} {what}, more than the "
                             f"{msg.max_stale_ms} ms asked for")
        r = self.read(str(pid), msg.key)
        return {"value": r.value, "version": r.version,
                "stale_ms": int(math.ceil(lag * 1000.0))}
