"""Membership leases (DESIGN §6): what makes "unreachable means stopped" true.

A brick may serve reads and vote YES for an RG only while it holds a valid lease for that
RG.  It renews every ``lease/3``: one batched request per peer, naming every RG the two
share.  A lease is valid from the moment the renewal was *sent* for ``lease × (1 − drift)``,
once a majority of the RG's active members (counting this brick) granted it in that round.
Counting from the send time, not the reply time, is what keeps the holder's view shorter
than every grantor's: a grantor counts its promise from when it *received* the request,
which is later, and for the full ``lease``; ``drift`` absorbs clock-rate differences.

A grantor promises not to vote for the holder's exclusion from that RG until its grant
ends (:meth:`Leases.grant_expiry`), and grants nothing new to a holder whose exclusion it
is voting on (:meth:`Leases.block`).  So once an exclusion commits, the excluded brick's
lease has run out and it has stopped serving before anyone writes without it (§5).

All times come from the injected clock (the reactor's monotonic ``seconds()``); nothing
here reads wall-clock time.
"""

from __future__ import annotations

import enum
from typing import Any, Callable

import attrs
from twisted.internet.defer import CancelledError, Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from dds.maps import ClusterMap
from dds.metrics import Metrics
from dds.records import Record, RGRecord

#: ``send(peer brick id, rg names)`` → the reply of a ``lease`` request.
SendLease = Callable[[str, list[str]], Deferred[dict[str, Any]]]


class HeldState(enum.Enum):
    """This brick's own lease for one RG.  Kept for logging transitions and ``status``;
    :meth:`Leases.valid` decides from the expiry time alone."""

    NONE = "none"  # never held, or dropped because this brick stopped being active
    VALID = "valid"
    EXPIRED = "expired"  # held once; no majority renewed it in time


@attrs.define
class _Round:
    """One renewal round: when it was sent, and who granted what in it so far."""

    seq: int
    sent_at: float
    granted: dict[str, set[str]] = attrs.Factory(dict)


class Leases:
    """Holder and grantor sides of the membership leases of one brick."""

    log = Logger()

    def __init__(self, brick_id: str, clock: IReactorTime, lease_s: float, drift: float,
                 current_map: Callable[[], ClusterMap], send: SendLease,
                 metrics: Metrics) -> None:
        if lease_s <= 0 or not 0 <= drift < 1:
            raise ValueError(f"need lease_s > 0 and 0 <= drift < 1, got {lease_s}, {drift}")
        self.brick_id = brick_id
        self.clock = clock
        self.lease_s = lease_s
        self.drift = drift
        #: How long a holder trusts a lease, from the send time of the round that won it.
        self.valid_s = lease_s * (1 - drift)
        self.current_map = current_map
        self.send = send
        self.metrics = metrics
        # -- holder side
        self._until: dict[str, float] = {}  # rg -> end of my validity (the hot path)
        self._state: dict[str, HeldState] = {}
        self._granted_by: dict[str, tuple[str, ...]] = {}
        self._expiry_timers: dict[str, IDelayedCall] = {}
        #: rg -> last round started before it was forgotten: older replies are ignored.
        self._forgotten: dict[str, int] = {}
        self._seq = 0
        self._inflight: set[Deferred[None]] = set()
        self._failing_peers: set[str] = set()
        # -- grantor side
        self._grants: dict[tuple[str, str], float] = {}  # (holder, rg) -> expiry
        self._blocked: dict[tuple[str, str], int] = {}  # (holder, rg) -> pending votes
        #: Grants made before this process started are not remembered, but none of them
        #: outlasts this: a restarted brick must not vote to exclude anyone before it.
        self._unknown_until = clock.seconds() + lease_s
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        metrics.gauge("leases_valid", self._count_valid)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Renew every ``lease/3`` (three chances per lease period), the first at once."""
        if not self._loop.running:
            self._loop.start(self.lease_s / 3, now=True)

    @property
    def running(self) -> bool:
        return bool(self._loop.running)

    def stop(self) -> None:
        """Stop renewing; in-flight requests are cancelled.  Held leases simply run out."""
        if self._loop.running:
            self._loop.stop()
        for d in list(self._inflight):
            d.cancel()
        for timer in self._expiry_timers.values():
            if timer.active():
                timer.cancel()
        self._expiry_timers.clear()

    def _tick(self) -> None:
        # The round's Deferred is not returned: LoopingCall would wait for it, and one
        # hung peer would then delay every other lease's renewal.
        Deferred.fromCoroutine(self.renew())

    # -- holder side ---------------------------------------------------------------------

    def valid(self, rg: str) -> bool:
        """Whether this brick may serve and vote for ``rg`` now.  Hot path."""
        return self._until.get(rg, 0.0) > self.clock.seconds()

    def valid_until(self, rg: str) -> float | None:
        """Clock time at which my lease for ``rg`` ends (maybe past); None if I hold none."""
        return self._until.get(rg)

    async def renew(self) -> None:
        """One round.  Never raises: a renewal problem must not stop the loop."""
        try:
            await self._round()
        except Exception:
            self.log.failure("lease renewal round failed")

    async def _round(self) -> None:
        self.metrics.inc("lease_rounds_total")
        self._seq += 1
        rnd = _Round(self._seq, self.clock.seconds())
        mine = {rec.name: rec for rec in self.current_map().rgs.values()
                if _holds(rec, self.brick_id)}
        for rg in [rg for rg in self._until if rg not in mine]:
            self._drop(rg, "this brick is no longer an active or recovering member")
        batches: dict[str, list[str]] = {}
        for name, rec in mine.items():
            rnd.granted[name] = set()
            for peer in rec.active_members:
                if peer != self.brick_id:
                    batches.setdefault(peer, []).append(name)
        for name in mine:  # an RG where I am the only active member needs nobody
            self._settle(rnd, name)
        asked = [self._ask(rnd, peer, rgs) for peer, rgs in sorted(batches.items())]
        if asked:
            await DeferredList(asked, consumeErrors=True)

    def _ask(self, rnd: _Round, peer: str, rgs: list[str]) -> Deferred[None]:
        """Send one batched request; its reply is settled as soon as it arrives, so a
        slow peer delays nobody else.  A reply later than the validity it could give is
        worthless, hence the timeout."""
        d: Deferred[Any] = maybeDeferred(self.send, peer, list(rgs))
        d.addTimeout(self.valid_s, self.clock)
        d.addCallbacks(self._on_reply, self._on_failure,
                       callbackArgs=(rnd, peer, rgs), errbackArgs=(peer,))
        self._inflight.add(d)
        d.addBoth(self._untrack, d)
        return d

    def _untrack(self, result: Any, d: Deferred[None]) -> Any:
        self._inflight.discard(d)
        return result

    def _on_reply(self, reply: Any, rnd: _Round, peer: str, rgs: list[str]) -> None:
        granted = reply.get("granted") if isinstance(reply, dict) else None
        if not isinstance(granted, list):
            self._peer_failed(peer, f"malformed lease reply {reply!r:.80}")
            return
        if peer in self._failing_peers:
            self._failing_peers.discard(peer)
            self.log.info("lease requests to {peer} are answered again", peer=peer)
        refused = reply.get("refused")
        if isinstance(refused, dict) and refused:
            self.log.debug("{peer} refused leases: {refused}", peer=peer, refused=refused)
        for rg in set(granted) & set(rgs):  # grants for RGs I did not ask are ignored
            rnd.granted[rg].add(peer)
            self._settle(rnd, rg)

    def _on_failure(self, failure: Failure, peer: str) -> None:
        if failure.check(CancelledError):  # stop() cancelled it
            return
        self._peer_failed(peer, failure.getErrorMessage())

    def _peer_failed(self, peer: str, error: str) -> None:
        self.metrics.inc("lease_renew_failures_total")
        if peer not in self._failing_peers:
            self._failing_peers.add(peer)
            self.log.warn("lease request to {peer} failed: {error}", peer=peer, error=error)

    def _settle(self, rnd: _Round, rg: str) -> None:
        """Extend ``rg``'s lease if a majority of its active members, per the map as it is
        *now*, granted it in ``rnd``.  Grants from non-active members do not count."""
        if self._forgotten.get(rg, 0) >= rnd.seq:
            return
        rec = self.current_map().rgs.get(rg)
        if rec is None or not _holds(rec, self.brick_id):
            self._drop(rg, "this brick is not an active or recovering member")
            return
        me = [self.brick_id] if self.brick_id in rec.active_members else []
        grantors = me + sorted(b for b in rnd.granted.get(rg, ())
                               if b in rec.active_members and b != self.brick_id)
        if len(grantors) < rec.quorum:
            return
        now = self.clock.seconds()
        until = rnd.sent_at + self.valid_s
        if until <= now or until <= self._until.get(rg, 0.0):
            return  # too late to be of use, or an older round: validity never shrinks
        self._until[rg] = until
        self._granted_by[rg] = tuple(grantors)
        timer = self._expiry_timers.get(rg)
        if timer is not None and timer.active():
            timer.reset(until - now)
        else:
            self._expiry_timers[rg] = self.clock.callLater(until - now, self._expired, rg)
        if self._state.get(rg) is not HeldState.VALID:
            self._state[rg] = HeldState.VALID
            self.log.info("lease for {rg} gained: granted by {grantors}, valid for "
                          "{remaining_s:.3f}s", rg=rg, grantors=list(grantors),
                          remaining_s=until - now)

    def _expired(self, rg: str) -> None:
        self._expiry_timers.pop(rg, None)
        if self._state.get(rg) is HeldState.VALID:
            self._state[rg] = HeldState.EXPIRED
            self.log.warn("lease for {rg} expired: no majority of its members renewed it "
                          "in time; not serving or voting for it", rg=rg)

    def forget(self, rg: str) -> None:
        """Drop my lease for ``rg`` (e.g. I stopped being active); replies to rounds
        already under way cannot bring it back."""
        self._drop(rg, "forgotten")

    def _drop(self, rg: str, reason: str) -> None:
        self._forgotten[rg] = self._seq
        self._until.pop(rg, None)
        self._granted_by.pop(rg, None)
        timer = self._expiry_timers.pop(rg, None)
        if timer is not None and timer.active():
            timer.cancel()
        if self._state.pop(rg, HeldState.NONE) is HeldState.VALID:
            self.log.warn("lease for {rg} dropped: {reason}", rg=rg, reason=reason)

    def on_map_change(self, new_map: ClusterMap, adopted: tuple[Record, ...]) -> None:
        """A ``MapState.on_change`` listener: drop at once every lease for an RG where
        this brick is no longer active (``valid`` does not look at the map)."""
        for rg in list(self._until):
            rec = new_map.rgs.get(rg)
            if rec is None or not _holds(rec, self.brick_id):
                self._drop(rg, "this brick is no longer an active or recovering member")

    def _count_valid(self) -> float:
        now = self.clock.seconds()
        return float(sum(1 for until in self._until.values() if until > now))

    # -- grantor side --------------------------------------------------------------------

    def grant(self, holder: str, rgs: list[str]) -> dict[str, Any]:
        """Body of the ``lease`` handler: grant each RG that may be granted, for one full
        lease counted from now (the receive time), and refuse the rest with a reason."""
        cmap = self.current_map()
        now = self.clock.seconds()
        granted: list[str] = []
        refused: dict[str, str] = {}
        for rg in dict.fromkeys(rgs):
            reason = self._refusal(cmap, holder, rg)
            if reason is not None:
                refused[rg] = reason
                continue
            key = (holder, rg)
            self._grants[key] = max(self._grants.get(key, 0.0), now + self.lease_s)
            granted.append(rg)
        self.metrics.inc("lease_grants_total", len(granted))
        self.metrics.inc("lease_refusals_total", len(refused))
        return {"granted": granted, "refused": refused}

    def _refusal(self, cmap: ClusterMap, holder: str, rg: str) -> str | None:
        rec = cmap.rgs.get(rg)
        if rec is None:
            return "unknown rg"
        if not _holds(rec, holder):
            state = rec.member_state(holder) or "not a member"
            return (f"holder is not an active or recovering member of rg {rg} "
                    f"v{rec.version} ({state})")
        if self.brick_id not in rec.active_members:
            return "grantor is not active"
        if self._blocked.get((holder, rg)):
            return "an exclusion of holder is being voted"
        return None

    def block(self, holder: str, rg: str) -> None:
        """A vote to exclude ``holder`` from ``rg`` is pending: refuse it new grants, so
        that waiting out :meth:`grant_expiry` ends.  Pair each call with :meth:`unblock`."""
        key = (holder, rg)
        self._blocked[key] = self._blocked.get(key, 0) + 1

    def unblock(self, holder: str, rg: str) -> None:
        key = (holder, rg)
        n = self._blocked.get(key, 0) - 1
        if n > 0:
            self._blocked[key] = n
        else:
            self._blocked.pop(key, None)

    def grant_expiry(self, holder: str, rg: str) -> float:
        """Clock time at which my newest grant to ``holder`` for ``rg`` ends: I must not
        vote for its exclusion before then.  Within one lease of this object's creation
        that is at least creation + lease, since a grant made before a restart is
        forgotten yet still binding; after that, with no grant, a time in the past."""
        return max(self._grants.get((holder, rg), 0.0), self._unknown_until)

    # -- introspection -------------------------------------------------------------------

    def status(self) -> dict[str, dict[str, Any]]:
        """Per RG where I am a member (any state): my held lease and my grants."""
        now = self.clock.seconds()
        out: dict[str, dict[str, Any]] = {}
        for rec in self.current_map().rgs_of_brick(self.brick_id):
            until = self._until.get(rec.name)
            if until is None:
                state, remaining = HeldState.NONE, None
            else:
                state = HeldState.VALID if until > now else HeldState.EXPIRED
                remaining = max(0.0, until - now)
            out[rec.name] = {
                "state": state.value,
                "remaining_s": remaining,
                "granted_by": list(self._granted_by.get(rec.name, ())),
                "granted_to": {holder: expiry - now
                               for (holder, rg), expiry in sorted(self._grants.items())
                               if rg == rec.name and expiry > now},
            }
        return out


def _holds(rec: RGRecord, brick: str) -> bool:
    """Who holds leases: active members, and recovering ones, so that a member readmitted
    after a re-sync serves at once instead of one renewal later (it serves nothing while
    it re-syncs anyway, and its exclusion waits out its grants like any other's)."""
    return rec.member_state(brick) in ("active", "recovering")
