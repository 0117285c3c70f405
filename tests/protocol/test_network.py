"""The in-memory network itself: ordering, time, faults, and failing loudly."""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock

from dds.errors import Unavailable
from tests.sim.network import MemoryNetwork, SimulationError
from tests.sim.peers import Peer, serve


def test_bytes_arrive_in_order_after_the_latency_despite_jitter() -> None:
    clock = Clock()
    net = MemoryNetwork(clock, random.Random(7), latency=0.01, jitter=0.05)
    servers = serve(net)
    client = Peer()
    net.connect("h", 1, client, name="c")
    assert client.transport is not None
    for i in range(50):
        client.transport.write(b"%d," % i)
    net.flush()
    assert servers[0].received == b""                 # nothing before the latency
    net.advance(0.01 + 0.05)
    assert servers[0].received == b"".join(b"%d," % i for i in range(50))


def test_run_fails_loudly_when_nothing_can_fire_the_deferred() -> None:
    net = MemoryNetwork(Clock())
    with pytest.raises(SimulationError, match="nothing is pending"):
        net.run(Deferred())


def test_run_fails_loudly_after_its_timeout() -> None:
    clock = Clock()
    net = MemoryNetwork(clock)
    d: Deferred[None] = Deferred()
    clock.callLater(100, d.callback, None)
    with pytest.raises(SimulationError, match="within 5"):
        net.run(d, timeout=5)
    assert clock.seconds() == 5
    assert net.run(d, timeout=100) is None


def test_partition_cuts_both_ways_and_refuses_until_healed() -> None:
    net = MemoryNetwork(Clock())
    servers = serve(net, name="b0")
    client = Peer()
    net.connect("h", 1, client, name="lib")
    net.partition("lib", ["b0", "b1"])
    assert client.lost is not None and servers[0].lost is not None
    with pytest.raises(Unavailable):
        net.connect("h", 1, Peer(), name="lib")
    net.connect("h", 1, Peer(), name="other")             # not cut off
    net.heal()
    net.connect("h", 1, Peer(), name="lib")


def test_loss_of_a_connection_delivers_what_was_written_first() -> None:
    net = MemoryNetwork(Clock())
    servers = serve(net)
    client = Peer()
    net.connect("h", 1, client, name="c")
    assert client.transport is not None
    client.transport.write(b"last words")
    client.transport.loseConnection()
    client.transport.write(b"too late")
    net.flush()
    assert servers[0].received == b"last words"
    assert servers[0].lost is not None and client.lost is not None
    assert net.connections == []


def test_pause_holds_deliveries_until_resume() -> None:
    net = MemoryNetwork(Clock())
    servers = serve(net, name="slow")
    client = Peer()
    net.connect("h", 1, client, name="c")
    net.pause("slow")
    assert client.transport is not None
    client.transport.write(b"a")
    client.transport.write(b"b")
    net.advance(10)
    assert servers[0].received == b""
    net.resume("slow")
    net.flush()
    assert servers[0].received == b"ab"


def test_an_exception_in_a_protocol_is_raised_out_of_the_pump() -> None:
    net = MemoryNetwork(Clock())

    class Broken(Peer):
        def dataReceived(self, data: bytes) -> None:
            raise ValueError("boom")

    class F(Factory):
        def buildProtocol(self, addr: Any) -> Broken:
            return Broken()
    net.listen("h", 1, F())
    client = Peer()
    net.connect("h", 1, client, name="c")
    assert client.transport is not None
    client.transport.write(b"x")
    with pytest.raises(SimulationError, match="boom"):
        net.flush()
    assert net.connections == [] and client.lost is not None
    assert len(net.errors) == 1
