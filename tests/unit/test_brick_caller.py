"""The admin tool's one way to call a brick by id (``tools/cluster.py`` ``BrickCaller``):
identity proven before anything is sent, one timeout policy, connections kept or not."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from dds.errors import ProtocolError, Unavailable
from dds.messages import Message, RGStatus, Status
from dds.tools.cluster import CALL_TIMEOUT_S, BrickCaller, Target
from dds.tools.runner import AdminError

ADDRESSES = {"b1": ("10.0.0.1", 7000), "b2": ("10.0.0.2", 7000)}
TARGET = Target((("10.0.0.1", 7000),), b"s" * 32)


class FakeConn:
    def __init__(self, peer: str) -> None:
        self.peer_id = peer
        self.closed: Deferred[None] = Deferred()
        self.calls: list[tuple[str, dict[str, Any], float]] = []
        self.reply: dict[str, Any] | None = None

    async def call(self, mtype: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.calls.append((mtype, body, timeout))
        return self.reply if self.reply is not None else {"ok": mtype}

    async def send(self, msg: Message, timeout: float) -> dict[str, Any]:
        return await self.call(msg.TYPE, msg.to_wire(), timeout)

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
        await caller(net).send("b2", Status())
    assert net.opened[0].calls == [] and net.opened[0].closed.called


@pytest_twisted.ensureDeferred
async def test_with_reuse_one_connection_serves_every_request_to_a_brick() -> None:
    net = FakeNetwork()
    bricks = caller(net)
    for _ in range(3):
        assert await bricks.send("b1", Status()) == {"ok": "status"}
    assert len(net.opened) == 1 and len(net.opened[0].calls) == 3
    bricks.close()
    assert net.opened[0].closed.called


@pytest_twisted.ensureDeferred
async def test_with_reuse_a_dropped_connection_is_opened_again() -> None:
    net = FakeNetwork()
    bricks = caller(net)
    await bricks.send("b1", Status())
    net.opened[0].close()
    await bricks.send("b1", Status())
    assert len(net.opened) == 2 and len(net.opened[1].calls) == 1


@pytest_twisted.ensureDeferred
async def test_without_reuse_each_request_has_a_connection_closed_after_it() -> None:
    net = FakeNetwork()
    bricks = caller(net, reuse=False)
    await bricks.send("b1", Status())
    await bricks.send("b1", Status())
    assert len(net.opened) == 2 and all(c.closed.called for c in net.opened)


@pytest_twisted.ensureDeferred
async def test_the_callers_timeout_holds_unless_a_call_gives_its_own() -> None:
    net = FakeNetwork()
    bricks = caller(net, timeout=30.0)
    await bricks.send("b1", RGStatus(rg="rg1"))
    await bricks.send("b1", Status(), 2.0)
    assert [t for _m, _b, t in net.opened[0].calls] == [30.0, 2.0]


@pytest_twisted.ensureDeferred
async def test_connecting_waits_the_named_default_unless_told_otherwise() -> None:
    net = FakeNetwork()
    await caller(net).send("b1", Status())
    await caller(net, connect_timeout=1.5).send("b1", Status())
    assert [o["timeout"] for o in net.options] == [CALL_TIMEOUT_S, 1.5]
    assert net.opened[0].calls[0][2] == CALL_TIMEOUT_S


@pytest_twisted.ensureDeferred
async def test_a_brick_without_an_address_is_an_admin_error() -> None:
    with pytest.raises(AdminError, match="no address for brick 'b7'"):
        await caller(FakeNetwork()).send("b7", Status())


@pytest_twisted.ensureDeferred
async def test_an_unreachable_brick_raises_the_connection_error_by_default() -> None:
    net = FakeNetwork(down={("10.0.0.1", 7000)})
    with pytest.raises(Unavailable):
        await caller(net).send("b1", Status())


@pytest_twisted.ensureDeferred
async def test_name_unreachable_names_the_brick_and_its_address() -> None:
    net = FakeNetwork(down={("10.0.0.1", 7000)})
    with pytest.raises(AdminError, match="brick b1 at 10.0.0.1:7000 does not answer: "):
        await caller(net, name_unreachable=True).send("b1", Status())


@pytest_twisted.ensureDeferred
async def test_addresses_learned_after_construction_are_used() -> None:
    net = FakeNetwork({("10.0.0.3", 7000): "b3"})
    bricks = caller(net)
    bricks.addresses["b3"] = ("10.0.0.3", 7000)
    assert await bricks.send("b3", Status()) == {"ok": "status"}


@pytest_twisted.ensureDeferred
async def test_a_request_goes_out_as_its_message_type_and_wire_body() -> None:
    net = FakeNetwork()
    await caller(net).send("b1", RGStatus(rg="rg1"), 2.0)
    assert net.opened[0].calls == [("rg_status", {"rg": "rg1"}, 2.0)]


@pytest_twisted.ensureDeferred
async def test_a_hand_built_body_still_goes_out_as_is_for_the_load_generators() -> None:
    net = FakeNetwork()
    assert await caller(net).call("b1", "checksum", {"pid": "0/1"}) == {"ok": "checksum"}
    assert net.opened[0].calls == [("checksum", {"pid": "0/1"}, CALL_TIMEOUT_S)]


@pytest_twisted.ensureDeferred
async def test_status_is_read_as_a_typed_reply() -> None:
    net = FakeNetwork()
    bricks = caller(net)
    conn = await bricks.connection("b1")
    conn.reply = {"id": "b1", "map_fp": 9, "members": {"rg1": "active"}, "blocked": []}
    status = await bricks.status("b1")
    assert status.map_fp == 9 and status.serves("rg1")


@pytest_twisted.ensureDeferred
async def test_a_status_reply_of_the_wrong_shape_is_a_protocol_error() -> None:
    net = FakeNetwork()
    bricks = caller(net)
    conn = await bricks.connection("b1")
    conn.reply = {"id": "b1", "map_fp": "nine"}
    with pytest.raises(ProtocolError, match="malformed status request reply"):
        await bricks.status("b1")
