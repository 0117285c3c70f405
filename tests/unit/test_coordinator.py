"""The 2PC coordinator alone, against stand-in connections on a Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

import pytest

from dds.errors import Indeterminate, InvalidRequest
from dds.partition import PartitionId
from dds.records import BrickRecord, Member, PartitionEntry, RGRecord

from dds.lib.coordinator import DECISION_ATTEMPT_S, Coordinator
from dds.lib.routing import Route


class SilentOnce:
    """A connection whose first answer to ``mtype`` never arrives (a lost frame); every
    other request is answered at once."""

    def __init__(self, clock: Clock, mtype: str) -> None:
        self.clock = clock
        self.mtype = mtype
        self.sent: list[str] = []
        self.outstanding = 0

    def call(self, mtype: str, body: dict[str, Any], timeout: float | None = None
             ) -> Deferred[Any]:
        self.sent.append(mtype)
        if mtype == self.mtype and self.sent.count(mtype) == 1:
            d: Deferred[Any] = Deferred()
            assert timeout is not None
            self.clock.callLater(timeout, d.errback, TimeoutError("no answer"))
            return d
        return succeed({"version": 0 if mtype == "prepare" else 1})

    def notify(self, mtype: str, body: dict[str, Any]) -> bool:
        self.sent.append(f"{mtype} (one-way)")
        return True


def _route() -> tuple[Route, list[BrickRecord]]:
    bricks = [BrickRecord(f"b{i}", 1, "127.0.0.1", 7400 + i) for i in (1, 2, 3)]
    pid = PartitionId(0, 0)
    rg = RGRecord("rg0", 1, tuple(Member(b.id) for b in bricks), (PartitionEntry(pid),))
    return Route(pid, rg, bricks), bricks


def _coordinator(clock: Clock, conns: dict[int, Any], commit_mode: str = "parallel"
                 ) -> Coordinator:
    async def never(host: str, port: int) -> Any:
        raise AssertionError("every connection is cached")
    return Coordinator(clock, never, lambda host, port: conns[port], lib_id=1,
                       commit_mode=commit_mode)


# -- parallel commit (the default): success at the last YES vote --------------------------

def test_parallel_commit_reports_success_at_the_last_yes_and_sends_commit_one_way() -> None:
    clock = Clock()
    route, bricks = _route()
    conns = {7401: SilentOnce(clock, "-"), 7402: SilentOnce(clock, "-"),
             7403: SilentOnce(clock, "-")}
    result: list[Any] = []
    Deferred.fromCoroutine(_coordinator(clock, conns).write(
        route, b"k", "put", b"v", None, (1, 1), deadline=10.0)).addBoth(result.append)
    assert result == [1]
    assert all(c.sent == ["prepare", "commit (one-way)"] for c in conns.values())


def test_parallel_commit_waits_for_every_vote() -> None:
    clock = Clock()
    route, bricks = _route()
    slow = SilentOnce(clock, "prepare")     # its vote is lost: no success on two YES
    conns = {7401: SilentOnce(clock, "-"), 7402: SilentOnce(clock, "-"), 7403: slow}
    result: list[Any] = []
    Deferred.fromCoroutine(_coordinator(clock, conns).write(
        route, b"k", "put", b"v", None, (1, 1), deadline=10.0)).addBoth(result.append)
    assert result == []
    assert not any("commit (one-way)" in c.sent for c in conns.values())


def test_an_unknown_commit_mode_is_refused_by_name() -> None:
    with pytest.raises(InvalidRequest, match="commit_mode must be one of parallel, ack"):
        _coordinator(Clock(), {}, commit_mode="fast")


# -- the acknowledged mode: success after every COMMIT acknowledgement -------------------


def test_a_lost_commit_acknowledgement_is_asked_for_again_within_the_deadline() -> None:
    clock = Clock()
    route, bricks = _route()
    lossy = SilentOnce(clock, "commit")
    conns = {7401: lossy, 7402: SilentOnce(clock, "-"), 7403: SilentOnce(clock, "-")}
    result: list[Any] = []
    Deferred.fromCoroutine(_coordinator(clock, conns, "ack").write(
        route, b"k", "put", b"v", None, (1, 1), deadline=10.0)).addBoth(result.append)
    assert result == []
    clock.advance(DECISION_ATTEMPT_S)          # the first attempt gives up ...
    clock.advance(0.01)                        # ... and after a short pause, asks again
    assert result == [1]
    assert lossy.sent == ["prepare", "commit", "commit"]


def test_an_acknowledgement_that_never_comes_makes_the_write_indeterminate() -> None:
    clock = Clock()
    route, bricks = _route()

    class Mute(SilentOnce):
        def call(self, mtype: str, body: dict[str, Any], timeout: float | None = None
                 ) -> Deferred[Any]:
            if mtype == "commit":
                self.sent.append(mtype)
                d: Deferred[Any] = Deferred()
                assert timeout is not None
                self.clock.callLater(timeout, d.errback, TimeoutError("no answer"))
                return d
            return super().call(mtype, body, timeout)

    conns = {7401: Mute(clock, "-"), 7402: SilentOnce(clock, "-"),
             7403: SilentOnce(clock, "-")}
    result: list[Any] = []
    Deferred.fromCoroutine(_coordinator(clock, conns, "ack").write(
        route, b"k", "put", b"v", None, (1, 1), deadline=3.0)).addBoth(result.append)
    clock.pump([0.01] * 400)
    assert len(result) == 1 and result[0].check(Indeterminate)
    assert "b1" in str(result[0].value)
