"""Unit tests of dds.bricks.leases (DESIGN §6) on a Clock, with peers answered by hand."""

from __future__ import annotations

from typing import Any, Iterable

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, formatEvent
from zope.interface import implementer

from dds.maps import ClusterMap
from dds.metrics import Metrics
from dds.records import BrickRecord, ClusterRecord, Member, MemberState, RGRecord

from dds.bricks.leases import HeldState, Leases

LEASE = 3.0
DRIFT = 0.1
VALID_S = LEASE * (1 - DRIFT)  # the same expression the module uses


def rg(name: str, *members: str | tuple[str, MemberState], version: int = 1) -> RGRecord:
    return RGRecord(name, version, [Member(m) if isinstance(m, str) else Member(*m)
                                    for m in members], [])


def cluster_map(*rgs: RGRecord) -> ClusterMap:
    bricks = sorted({m.brick for r in rgs for m in r.members})
    return ClusterMap.of([ClusterRecord("test", 1, 3),
                          *(BrickRecord(b, 1, "127.0.0.1", 7400 + i)
                            for i, b in enumerate(bricks)),
                          *rgs])


class Peers:
    """The ``send`` callable: records each request and hands back a Deferred that the
    test fires by hand (or that fails at once for peers marked ``down``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], Deferred[dict[str, Any]]]] = []
        self.down: set[str] = set()
        self.raising: set[str] = set()

    def __call__(self, peer: str, rgs: list[str]) -> Deferred[dict[str, Any]]:
        if peer in self.raising:
            raise ConnectionRefusedError(f"{peer} refused the connection")
        d: Deferred[dict[str, Any]] = Deferred()
        self.calls.append((peer, list(rgs), d))
        if peer in self.down:
            d.errback(ConnectionError(f"{peer} is down"))
        return d

    def peers_asked(self) -> list[str]:
        return [peer for peer, _, _ in self.calls]

    def pending(self, peer: str) -> tuple[list[str], Deferred[dict[str, Any]]]:
        """The oldest unanswered request to ``peer``."""
        for p, rgs, d in self.calls:
            if p == peer and not d.called:
                return rgs, d
        raise AssertionError(f"no pending request to {peer}")

    def grant(self, peer: str, rgs: Iterable[str] | None = None) -> None:
        asked, d = self.pending(peer)
        d.callback({"granted": list(asked if rgs is None else rgs), "refused": {}})

    def refuse(self, peer: str) -> None:
        asked, d = self.pending(peer)
        d.callback({"granted": [], "refused": {r: "no" for r in asked}})

    def fail(self, peer: str) -> None:
        _, d = self.pending(peer)
        d.errback(ConnectionError(f"{peer} went away"))


class World:
    """One brick's Leases with a settable map."""

    def __init__(self, cmap: ClusterMap, me: str = "a", start_at: float = 0.0) -> None:
        self.clock = Clock()
        self.clock.advance(start_at)
        self.map = cmap
        self.peers = Peers()
        self.metrics = Metrics()
        self.leases = Leases(me, self.clock, LEASE, DRIFT, lambda: self.map, self.peers,
                             self.metrics)

    def renew(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.leases.renew())


THREE = cluster_map(rg("rg1", "a", "b", "c"))


@pytest.fixture
def w() -> World:
    return World(THREE)


# -- holder: gaining a lease -----------------------------------------------------------


def test_majority_of_grants_makes_lease_valid(w: World) -> None:
    w.renew()
    assert not w.leases.valid("rg1")
    w.peers.grant("b")
    assert w.leases.valid("rg1")


def test_minority_of_grants_is_not_valid() -> None:
    w = World(cluster_map(rg("rg1", "a", "b", "c", "d", "e")))
    w.renew()
    w.peers.grant("b")  # a + b = 2 of 5; quorum is 3
    w.peers.refuse("c")
    w.peers.fail("d")
    assert not w.leases.valid("rg1")
    assert w.leases.valid_until("rg1") is None


def test_validity_counts_from_send_time_with_drift(w: World) -> None:
    w.clock.advance(10.0)
    w.renew()
    w.clock.advance(0.5)  # the reply is late by half a second
    w.peers.grant("b")
    assert w.leases.valid_until("rg1") == 10.0 + VALID_S
    w.clock.advance(VALID_S - 0.5 - 0.001)
    assert w.leases.valid("rg1")
    w.clock.advance(0.001)
    assert not w.leases.valid("rg1")


def test_reply_after_validity_window_gives_no_lease(w: World) -> None:
    w.renew()
    _, d = w.peers.pending("b")
    w.clock.advance(VALID_S + 1.0)
    d.callback({"granted": ["rg1"], "refused": {}})  # already timed out: ignored
    assert not w.leases.valid("rg1")
    assert w.leases.valid_until("rg1") is None


def test_grants_from_members_no_longer_active_do_not_count(w: World) -> None:
    w.renew()
    w.map = cluster_map(rg("rg1", "a", ("b", "excluded"), "c", version=2))
    w.peers.grant("b")  # a + b, but b is not active in the map at reply time
    assert not w.leases.valid("rg1")
    w.peers.grant("c")
    assert w.leases.valid("rg1")


def test_grant_for_an_rg_not_asked_is_ignored() -> None:
    w = World(cluster_map(rg("rg1", "a", "b", "c"), rg("rg2", "a", "d", "e")))
    w.renew()
    w.peers.grant("b", ["rg1", "rg2"])  # b is no member of rg2
    assert w.leases.valid("rg1")
    assert not w.leases.valid("rg2")


def test_quorum_one_rg_valid_without_peers() -> None:
    w = World(cluster_map(rg("rg1", "a", ("b", "excluded"), ("c", "recovering"))))
    w.renew()
    assert w.peers.calls == []
    assert w.leases.valid("rg1")
    assert w.leases.valid_until("rg1") == VALID_S


def test_one_request_per_peer_per_round_with_several_shared_rgs() -> None:
    w = World(cluster_map(rg("rg1", "a", "b", "c"), rg("rg2", "a", "b", "d"),
                          rg("rg3", "b", "c", "d")))
    w.renew()
    assert sorted(w.peers.peers_asked()) == ["b", "c", "d"]
    assert sorted(w.peers.pending("b")[0]) == ["rg1", "rg2"]
    assert w.peers.pending("c")[0] == ["rg1"]
    assert w.peers.pending("d")[0] == ["rg2"]


def test_non_active_members_are_not_asked() -> None:
    w = World(cluster_map(rg("rg1", "a", "b", ("c", "recovering"))))
    w.renew()
    assert w.peers.peers_asked() == ["b"]


# -- holder: failures and expiry --------------------------------------------------------


def test_failing_peer_does_not_prevent_valid_lease_from_others(w: World) -> None:
    w.peers.down.add("b")
    done = w.renew()
    w.peers.grant("c")
    assert w.leases.valid("rg1")
    assert done.called and done.result is None  # the round did not raise
    assert w.metrics.counters["lease_renew_failures_total"] == 1


def test_hung_peer_does_not_delay_lease_from_others(w: World) -> None:
    done = w.renew()
    w.peers.grant("c")  # b never answers
    assert w.leases.valid("rg1")
    assert not done.called
    w.clock.advance(VALID_S)  # b's request times out; the round ends
    assert done.called
    assert w.metrics.counters["lease_renew_failures_total"] == 1


def test_send_raising_does_not_stop_the_round(w: World) -> None:
    w.peers.raising.add("b")
    w.renew()
    w.peers.grant("c")
    assert w.leases.valid("rg1")


def test_malformed_reply_counts_as_failure_and_never_raises(w: World) -> None:
    done = w.renew()
    w.peers.pending("b")[1].callback({"granted": "rg1"})
    w.peers.pending("c")[1].callback("nonsense")  # type: ignore[arg-type]
    assert done.called and done.result is None
    assert not w.leases.valid("rg1")
    assert w.metrics.counters["lease_renew_failures_total"] == 2


def test_lease_expires_when_renewals_stop(w: World) -> None:
    w.leases.start()
    w.peers.grant("b")
    assert w.leases.valid("rg1")
    w.peers.down.update({"b", "c"})
    w.clock.pump([LEASE / 3] * 3)
    assert not w.leases.valid("rg1")
    assert w.leases.status()["rg1"]["state"] == "expired"
    w.leases.stop()


def test_lease_stays_valid_while_renewed(w: World) -> None:
    w.leases.start()
    for _ in range(10):
        w.peers.grant("c")
        w.clock.advance(LEASE / 3)
        assert w.leases.valid("rg1")
    w.leases.stop()


def test_valid_until_never_shrinks(w: World) -> None:
    w.renew()  # round 1 at t=0
    w.clock.advance(1.0)
    w.renew()  # round 2 at t=1
    d1 = w.peers.pending("b")[1]  # round 1's request
    w.peers.calls.remove(next(c for c in w.peers.calls if c[2] is d1))
    w.peers.grant("b")  # round 2 answered first
    assert w.leases.valid_until("rg1") == 1.0 + VALID_S
    d1.callback({"granted": ["rg1"], "refused": {}})  # then round 1, late
    assert w.leases.valid_until("rg1") == 1.0 + VALID_S


def test_holder_that_is_excluded_loses_its_lease(w: World) -> None:
    w.renew()
    w.peers.grant("b")
    w.map = cluster_map(rg("rg1", ("a", "excluded"), "b", "c", version=2))
    w.renew()
    assert not w.leases.valid("rg1")
    assert len(w.peers.calls) == 2  # round 2 asked nobody: a is excluded


def test_a_recovering_holder_needs_a_majority_of_the_active_members(w: World) -> None:
    w.map = cluster_map(rg("rg1", ("a", "recovering"), "b", "c", version=2))
    w.renew()
    w.peers.grant("b")
    assert not w.leases.valid("rg1")        # it does not count itself: 1 of 2
    w.peers.grant("c")
    assert w.leases.valid("rg1")


def test_map_change_listener_drops_lease_at_once(w: World) -> None:
    w.renew()
    w.peers.grant("b")
    new = cluster_map(rg("rg1", ("a", "excluded"), "b", "c", version=2))
    w.leases.on_map_change(new, tuple(new.rgs.values()))
    assert not w.leases.valid("rg1")
    assert w.leases.valid_until("rg1") is None


def test_forget_drops_lease_and_ignores_replies_of_earlier_rounds(w: World) -> None:
    w.renew()
    w.peers.grant("b")
    w.clock.advance(0.5)
    w.renew()
    w.leases.forget("rg1")
    assert not w.leases.valid("rg1")
    w.peers.grant("b")
    w.peers.grant("c")
    assert not w.leases.valid("rg1")
    w.renew()  # a round after forgetting counts again
    w.peers.grant("b")
    assert w.leases.valid("rg1")


# -- holder: loop and logging -----------------------------------------------------------


def test_start_runs_first_round_at_once_then_every_third_of_the_lease(w: World) -> None:
    w.leases.start()
    assert w.metrics.counters["lease_rounds_total"] == 1
    w.clock.advance(LEASE / 3)
    assert w.metrics.counters["lease_rounds_total"] == 2
    w.leases.stop()
    w.clock.advance(LEASE)
    assert w.metrics.counters["lease_rounds_total"] == 2


def test_hung_round_does_not_delay_the_next(w: World) -> None:
    w.leases.start()  # b and c never answer round 1
    w.clock.advance(LEASE / 3)
    assert w.metrics.counters["lease_rounds_total"] == 2
    w.leases.stop()


def test_stop_cancels_requests_in_flight(w: World) -> None:
    w.leases.start()
    w.leases.stop()
    assert all(d.called for _, _, d in w.peers.calls)
    assert w.clock.getDelayedCalls() == []
    assert w.metrics.counters["lease_renew_failures_total"] == 0


@implementer(ILogObserver)
class Events(list[str]):
    def __call__(self, event: dict[str, Any]) -> None:
        self.append(formatEvent(event))


def test_gain_and_expiry_are_each_logged_once(w: World) -> None:
    events = Events()
    w.leases.log = Logger(observer=events)
    w.leases.start()
    for _ in range(3):
        w.peers.grant("b")
        w.clock.advance(LEASE / 3)
    w.peers.down.update({"b", "c"})
    w.clock.pump([LEASE / 3] * 6)
    w.leases.stop()
    assert len([e for e in events if "rg1 gained" in e]) == 1
    assert len([e for e in events if "rg1 expired" in e]) == 1


# -- grantor ------------------------------------------------------------------------------


def test_grant_to_an_active_holder(w: World) -> None:
    assert w.leases.grant("b", ["rg1"]) == {"granted": ["rg1"], "refused": {}}


def test_grant_expiry_is_receive_time_plus_full_lease(w: World) -> None:
    w.clock.advance(5.0)
    w.leases.grant("b", ["rg1"])
    assert w.leases.grant_expiry("b", "rg1") == 5.0 + LEASE


def test_grant_expiry_covers_grants_forgotten_by_a_restart() -> None:
    w = World(THREE, start_at=100.0)  # a fresh object: maybe a restarted brick
    assert w.leases.grant_expiry("b", "rg1") == 100.0 + LEASE


def test_grant_expiry_without_a_grant_is_past_after_one_lease(w: World) -> None:
    w.clock.advance(LEASE + 1.0)
    assert w.leases.grant_expiry("b", "rg1") < w.clock.seconds()


def test_grant_refused_while_exclusion_is_voted(w: World) -> None:
    w.clock.advance(5.0)
    w.leases.grant("b", ["rg1"])
    w.leases.block("b", "rg1")
    w.clock.advance(1.0)
    reply = w.leases.grant("b", ["rg1"])
    assert reply["granted"] == []
    assert reply["refused"]["rg1"] == "an exclusion of holder is being voted"
    assert w.leases.grant_expiry("b", "rg1") == 5.0 + LEASE  # the earlier grant only
    assert w.leases.grant("c", ["rg1"])["granted"] == ["rg1"]  # only b is blocked


def test_unblock_allows_grants_again(w: World) -> None:
    w.leases.block("b", "rg1")
    w.leases.unblock("b", "rg1")
    assert w.leases.grant("b", ["rg1"])["granted"] == ["rg1"]


def test_a_recovering_holder_is_granted() -> None:
    w = World(cluster_map(rg("rg1", "a", ("b", "recovering"), "c")))
    assert w.leases.grant("b", ["rg1"])["granted"] == ["rg1"]


def test_an_excluded_holder_is_refused() -> None:
    w = World(cluster_map(rg("rg1", "a", ("b", "excluded"), "c")))
    reply = w.leases.grant("b", ["rg1"])
    assert reply["granted"] == []
    assert reply["refused"]["rg1"].startswith("holder is not an active or recovering member")
    assert w.leases.status()["rg1"]["granted_to"] == {}


def test_non_member_holder_is_refused(w: World) -> None:
    assert "not a member" in w.leases.grant("z", ["rg1"])["refused"]["rg1"]


def test_inactive_grantor_refuses() -> None:
    w = World(cluster_map(rg("rg1", ("a", "recovering"), "b", "c")))
    assert w.leases.grant("b", ["rg1"])["refused"] == {"rg1": "grantor is not active"}


def test_unknown_rg_is_refused_not_raised(w: World) -> None:
    reply = w.leases.grant("b", ["rg1", "nope"])
    assert reply == {"granted": ["rg1"], "refused": {"nope": "unknown rg"}}


def test_grant_and_refusal_counters(w: World) -> None:
    w.leases.grant("b", ["rg1", "nope"])
    assert w.metrics.counters["lease_grants_total"] == 1
    assert w.metrics.counters["lease_refusals_total"] == 1


# -- status -------------------------------------------------------------------------------


def test_status_reports_held_lease_and_grants(w: World) -> None:
    w.renew()
    w.peers.grant("b")
    w.leases.grant("c", ["rg1"])
    w.clock.advance(1.0)
    st = w.leases.status()["rg1"]
    assert st["state"] == HeldState.VALID.value
    assert st["remaining_s"] == pytest.approx(VALID_S - 1.0)
    assert st["granted_by"] == ["a", "b"]
    assert st["granted_to"] == {"c": pytest.approx(LEASE - 1.0)}


def test_status_without_lease_is_none(w: World) -> None:
    assert w.leases.status() == {"rg1": {"state": "none", "remaining_s": None,
                                         "granted_by": [], "granted_to": {}}}
