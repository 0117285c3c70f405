"""The simulation's process faults: per-process reactors (freeze, thaw, kill) and the
network's slow links, cuts, stopped and dead nodes."""

from __future__ import annotations

import pytest
from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.task import Clock

from dds.errors import Unavailable
from tests.sim.network import MemoryNetwork
from tests.sim.nodes import NodeReactor
from tests.sim.peers import connect, serve


# -- NodeReactor -------------------------------------------------------------------------


def test_a_frozen_node_runs_its_due_timers_late_and_in_order_when_thawed() -> None:
    clock = Clock()
    node, other = NodeReactor(clock, "n"), NodeReactor(clock, "o")
    ran: list[tuple[str, float]] = []
    node.callLater(2, lambda: ran.append(("second", clock.seconds())))
    node.callLater(1, lambda: ran.append(("first", clock.seconds())))
    other.callLater(1.5, lambda: ran.append(("other", clock.seconds())))
    node.freeze()
    clock.pump([1.5, 3.5])
    assert ran == [("other", 1.5)] and node.held == 2
    node.thaw()
    assert ran == [("other", 1.5), ("first", 5), ("second", 5)]
    assert node.getDelayedCalls() == []


def test_a_held_timer_can_still_be_cancelled_and_reports_itself_active() -> None:
    clock = Clock()
    node = NodeReactor(clock, "n")
    ran: list[int] = []
    call = node.callLater(1, ran.append, 1)
    node.freeze()
    clock.advance(2)
    assert call.active() and not ran
    call.cancel()
    assert not call.active()
    with pytest.raises(AlreadyCancelled):
        call.cancel()
    node.thaw()
    assert ran == []
    done = node.callLater(0, ran.append, 2)
    clock.advance(0)
    assert ran == [2]
    with pytest.raises(AlreadyCalled):
        done.cancel()


def test_a_killed_node_never_runs_a_timer_again() -> None:
    clock = Clock()
    node = NodeReactor(clock, "n")
    ran: list[int] = []
    node.callLater(1, ran.append, 1)
    node.freeze()
    node.callLater(0.5, ran.append, 2)
    clock.advance(0.7)
    node.kill()
    node.callLater(0, ran.append, 3)
    clock.advance(10)
    node.thaw()
    assert ran == [] and clock.getDelayedCalls() == []


def test_reset_and_delay_move_a_pending_timer() -> None:
    clock = Clock()
    node = NodeReactor(clock, "n")
    ran: list[float] = []
    call = node.callLater(1, lambda: ran.append(clock.seconds()))
    call.reset(3)
    call.delay(1)
    assert call.getTime() == 4
    clock.advance(3.5)
    assert ran == []
    clock.advance(1)
    assert ran == [4.5]


# -- the network: slow links, cuts, stopped and dead nodes -------------------------------


def test_a_slow_link_delays_only_its_connections_and_keeps_them_fifo() -> None:
    net = MemoryNetwork(Clock(), latency=0.01)
    servers = serve(net)
    slow, fast = connect(net, "slow"), connect(net, "fast")
    assert slow.transport is not None and fast.transport is not None
    slow.transport.write(b"1")
    net.set_delay("slow", "srv", 1.0)
    slow.transport.write(b"2")          # queued behind 1, later than it
    net.set_delay("slow", "srv", 0.0)
    slow.transport.write(b"3")          # no delay any more, but never overtakes 2
    fast.transport.write(b"f")
    net.advance(0.5)
    assert servers[0].received == b"1" and servers[1].received == b"f"
    net.advance(0.6)
    assert servers[0].received == b"123"


def test_cut_breaks_one_connection_and_both_ends_see_it() -> None:
    net = MemoryNetwork(Clock(), latency=0.01)
    servers = serve(net)
    a, b = connect(net, "a"), connect(net, "b")
    assert a.transport is not None
    a.transport.write(b"in flight")
    net.cut(net.connections[0])
    net.advance(1)
    assert a.lost is not None and servers[0].lost is not None
    assert servers[0].received == b""
    assert b.lost is None and len(net.connections) == 1
    connect(net, "a")                   # a cut is not a partition: reconnecting works


def test_a_stopped_process_accepts_reads_and_loses_connections_only_when_resumed() -> None:
    net = MemoryNetwork(Clock(), latency=0.01)
    servers = serve(net, name="srv")
    old = connect(net, "old")
    net.pause("srv", stop_process=True)
    new = connect(net, "new")           # the kernel accepts; the process does not know
    assert new.transport is not None
    new.transport.write(b"hello")
    net.cut(net.connections[0])         # the old connection breaks meanwhile
    net.advance(5)
    assert old.lost is not None
    assert not servers[1].made and servers[1].received == b""
    assert servers[0].lost is None
    net.resume("srv")
    net.flush()
    assert servers[1].made and servers[1].received == b"hello"
    assert servers[0].lost is not None


def test_a_dead_node_is_gone_for_its_peers_and_hears_nothing_more() -> None:
    net = MemoryNetwork(Clock(), latency=0.01)
    servers = serve(net, name="srv")
    client = connect(net)
    assert client.transport is not None
    client.transport.write(b"unread")
    net.kill("srv")
    net.advance(1)
    assert client.lost is not None
    assert servers[0].lost is None and servers[0].received == b""
    with pytest.raises(Unavailable):
        connect(net)
    net.revive("srv")
    servers = serve(net, name="srv")    # a new incarnation listens again
    again = connect(net)
    assert again.transport is not None
    again.transport.write(b"hi")
    net.advance(1)
    assert servers[0].received == b"hi"
