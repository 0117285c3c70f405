"""The admin tool's one way to call a brick by id (``tools/cluster.py`` ``BrickCaller``):
identity proven before anything is sent, one timeout policy, connections kept or not."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from dds.errors import Unavailable
from dds.tools.cluster import CALL_TIMEOUT_S, BrickCaller, Target
from dds.tools.runner import AdminError

ADDRESSES = {"b1": ("10.0.0.1", 7000), "b2": ("10.0.0.2", 7000)}
TARGET = Target((("10.0.0.1", 7000),), b"s" * 32)


class FakeConn:
    def __init__(self, peer: str) -> None:
        self.peer_id = peer
        self.closed: Deferred[None] = Deferred()
        self.calls: list[tuple[str, dict[str, Any], float]] = []

    async def call(self, mtype: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.calls.append((mtype, body, timeout))
        return {"ok": mtype}

    def close(self) -> None:
        if not self.closed.called:
            self.closed.callback(None)


class FakeNetwork:
    """Each address answers as the brick ``peers`` names (the map's id by default)."""

    def __init__(self, peers: dict[tuple[str, int], str] | None = None,
                 down: set[tuple[str, int]] | None = None) -> None:
        self.peers = peers or {}
        self.down = down or set()
        self.opened: list[FakeConn] = []
        self.options: list[dict[str, Any]] = []

    async def open(self, reactor: Any, host: str, port: int, **options: Any) -> FakeConn:
        self.options.append(options)
        if (host, port) in self.down:
            raise Unavailable(f"cannot connect to {host}:{port}: refused")
        peer = self.peers.get((host, port)) or next(
            b for b, a in ADDRESSES.items() if a == (host, port))
        conn = FakeConn(peer)
        self.opened.append(conn)
        return conn


def caller(net: FakeNetwork, **kwargs: Any) -> BrickCaller:
    return BrickCaller(Clock(), TARGET, dict(ADDRESSES), opener=net.open, **kwargs)


@pytest_twisted.ensureDeferred
async def test_a_brick_answering_under_another_id_is_sent_nothing() -> None:
    net = FakeNetwork({("10.0.0.2", 7000): "b9"})
    with pytest.raises(AdminError, match="10.0.0.2:7000 answers as 'b9', not as brick b2"):
        await caller(net).call("b2", "status", {})
    assert net.opened[0].calls == [] and net.opened[0].closed.called


@pytest_twisted.ensureDeferred
async def test_with_reuse_one_connection_serves_every_request_to_a_brick() -> None:
    net = FakeNetwork()
    bricks = caller(net)
    for _ in range(3):
        assert await bricks.call("b1", "status", {}) == {"ok": "status"}
    assert len(net.opened) == 1 and len(net.opened[0].calls) == 3
    bricks.close()
    assert net.opened[0].closed.called


@pytest_twisted.ensureDeferred
async def test_with_reuse_a_dropped_connection_is_opened_again() -> None:
    net = FakeNetwork()
    bricks = caller(net)
    await bricks.call("b1", "status", {})
    net.opened[0].close()
    await bricks.call("b1", "status", {})
    assert len(net.opened) == 2 and len(net.opened[1].calls) == 1


@pytest_twisted.ensureDeferred
async def test_without_reuse_each_request_has_a_connection_closed_after_it() -> None:
    net = FakeNetwork()
    bricks = caller(net, reuse=False)
    await bricks.call("b1", "status", {})
    await bricks.call("b1", "status", {})
    assert len(net.opened) == 2 and all(c.closed.called for c in net.opened)


@pytest_twisted.ensureDeferred
async def test_the_callers_timeout_holds_unless_a_call_gives_its_own() -> None:
    net = FakeNetwork()
    bricks = caller(net, timeout=30.0)
    await bricks.call("b1", "rg_update", {})
    await bricks.call("b1", "status", {}, 2.0)
    assert [t for _m, _b, t in net.opened[0].calls] == [30.0, 2.0]


@pytest_twisted.ensureDeferred
async def test_connecting_waits_the_named_default_unless_told_otherwise() -> None:
    net = FakeNetwork()
    await caller(net).call("b1", "status", {})
    await caller(net, connect_timeout=1.5).call("b1", "status", {})
    assert [o["timeout"] for o in net.options] == [CALL_TIMEOUT_S, 1.5]
    assert net.opened[0].calls[0][2] == CALL_TIMEOUT_S


@pytest_twisted.ensureDeferred
async def test_a_brick_without_an_address_is_an_admin_error() -> None:
    with pytest.raises(AdminError, match="no address for brick 'b7'"):
        await caller(FakeNetwork()).call("b7", "status", {})


@pytest_twisted.ensureDeferred
async def test_an_unreachable_brick_raises_the_connection_error_by_default() -> None:
    net = FakeNetwork(down={("10.0.0.1", 7000)})
    with pytest.raises(Unavailable):
        await caller(net).call("b1", "status", {})


@pytest_twisted.ensureDeferred
async def test_name_unreachable_names_the_brick_and_its_address() -> None:
    net = FakeNetwork(down={("10.0.0.1", 7000)})
    with pytest.raises(AdminError, match="brick b1 at 10.0.0.1:7000 does not answer: "):
        await caller(net, name_unreachable=True).call("b1", "status", {})


@pytest_twisted.ensureDeferred
async def test_addresses_learned_after_construction_are_used() -> None:
    net = FakeNetwork({("10.0.0.3", 7000): "b3"})
    bricks = caller(net)
    bricks.addresses["b3"] = ("10.0.0.3", 7000)
    assert await bricks.call("b3", "status", {}) == {"ok": "status"}
