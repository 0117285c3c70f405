"""The library's silence probe (``RPCProtocol.probe_silence``, issue 15): a brick that
answers nothing — not even a ping — is given up in about a second and a half, while
one that is merely slow to answer a request (waiting for a lock) is waited for."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from dds.errors import Timeout
from dds.rpc import State
from tests.protocol.test_rpc import Server, connect
from tests.sim.network import MemoryNetwork


def probed(net: MemoryNetwork) -> Any:
    client = net.run(connect(net))
    client.probe_silence(0.5, 1.0)
    return client


def test_a_paused_brick_fails_pending_requests_with_timeout_after_the_probe() -> None:
    net = MemoryNetwork(Clock())
    Server(net)
    client = probed(net)
    net.pause("server")
    d = client.call("prepare", {}, timeout=2.5)
    net.advance(1.4)
    assert not d.called
    net.advance(0.2)
    error = net.fail_of(d, timeout=0)
    assert isinstance(error, Timeout) and "not even a ping" in error.message
    assert client.state is State.CLOSED and client.outstanding == 0
    assert client.metrics.value("silent_peers_total") == 1


def test_a_brick_slow_to_answer_but_answering_pings_is_waited_for() -> None:
    net = MemoryNetwork(Clock())
    server = Server(net, hold=True)
    client = probed(net)
    d = client.call("prepare", {}, timeout=2.5)
    net.flush()
    # The held request gets no reply, but the ping does (held too: answer it by hand).
    for _ in range(8):
        net.advance(0.25)
        for h in server.held[1:]:
            if not h.called:
                h.callback({})
    assert not d.called and client.state is State.READY
    server.held[0].callback({"version": 1})
    assert net.run(d) == {"version": 1}
    assert client.metrics.value("silence_probes_total") >= 1
    assert client.metrics.value("silent_peers_total") == 0


def test_without_the_probe_a_paused_brick_costs_the_whole_timeout() -> None:
    net = MemoryNetwork(Clock())
    Server(net)
    client = net.run(connect(net))
    net.pause("server")
    d = client.call("prepare", {}, timeout=2.5)
    net.advance(2.4)
    assert not d.called
    net.advance(0.1)
    assert isinstance(net.fail_of(d, timeout=0), Timeout)
    assert client.state is State.READY


def test_an_idle_probed_connection_sends_no_ping() -> None:
    net = MemoryNetwork(Clock())
    server = Server(net)
    client = probed(net)
    assert net.run(client.call("get", {})) == {"echo": {}}
    net.advance(10.0)
    assert [c for c, _ in server.calls] == ["get"]
    assert client.state is State.READY


def test_a_request_expiring_with_the_probes_ping_fails_once() -> None:
    # The ping times out in the same sweep as a later request: giving up the peer fails
    # that request too, and the sweep must not fail it a second time.
    net = MemoryNetwork(Clock())
    Server(net)
    client = probed(net)
    net.pause("server")
    first = client.call("prepare", {}, timeout=2.5)
    net.advance(0.6)                     # the ping went out at 0.5, due at 1.5
    second = client.call("prepare", {}, timeout=0.9)     # due at 1.5 too
    net.advance(0.9)
    for d in (first, second):
        assert isinstance(net.fail_of(d, timeout=0), Timeout)
    assert client.outstanding == 0
