"""RPCProtocol over the in-memory network: handshake, framing, multiplexing, timeouts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from zope.interface import provider

from dds import errors
from dds.auth import Credentials
from dds.codec import FrameDecoder, FrameTooLarge, decode_payload, encode_frame
from dds.errors import (AuthenticationFailed, ConnectionLost, DDSError, InvalidRequest,
                        ProtocolError, Timeout, from_wire)
from dds.rpc import BATCH, RPCProtocol, State
from tests.sim.network import Connection, MemoryNetwork, SimCluster, as_deferred

CLUSTER = "dds"
SECRET = b"s"
HOST, PORT = "10.0.0.1", 7000


def _server_credentials(client_secret: bytes) -> Credentials:
    """A brick's: every role's secret, the client role's being ``client_secret``."""
    return Credentials("brick", {"client": client_secret, "admin": client_secret + b"-a",
                                 "brick": client_secret + b"-b"})


class Server:
    """A listener whose protocols record every request their handler sees.  A handler
    result is ``{"echo": body}``, or a Deferred the test fires when ``hold`` is set."""

    def __init__(self, net: MemoryNetwork, *, cluster: str = CLUSTER, secret: bytes = SECRET,
                 max_frame: int = 1 << 20, hold: bool = False) -> None:
        self.net = net
        self.calls: list[tuple[str, Any]] = []
        self.held: list[Deferred[Any]] = []
        self.hold = hold
        self.protos: list[RPCProtocol] = []
        server = self

        class F(Factory):
            def buildProtocol(self, addr: Any) -> RPCProtocol:
                p = RPCProtocol(is_client=False, node_id="server", cluster=cluster,
                                credentials=_server_credentials(secret), clock=net.clock,
                                handler=server.handle,
                                max_frame=max_frame)
                # Nobody awaits a server's ``ready``: its failures are logged and counted
                # by the protocol itself.
                p.ready.addErrback(lambda _: None)
                server.protos.append(p)
                return p
        net.listen(HOST, PORT, F(), name="server")

    def handle(self, mtype: str, body: Any, conn: RPCProtocol) -> Any:
        self.calls.append((mtype, body))
        if self.hold:
            d: Deferred[Any] = Deferred()
            self.held.append(d)
            return d
        return {"echo": body}

    @property
    def proto(self) -> RPCProtocol:
        assert len(self.protos) == 1
        return self.protos[0]


def connect(net: MemoryNetwork, *, cluster: str = CLUSTER, secret: bytes = SECRET,
            timeout: float = 5.0, node_id: str = "client") -> Deferred[RPCProtocol]:
    return as_deferred(net.opener()(
        net.clock, HOST, PORT, node_id=node_id, cluster=cluster, secret=secret,
        max_frame=1 << 20, timeout=timeout))


def frames_to(net: MemoryNetwork, side: int) -> list[tuple[str, int, Any]]:
    """Record the frames delivered to ``side`` of every connection from now on."""
    decoder = FrameDecoder(1 << 30)
    out: list[tuple[str, int, Any]] = []

    def tap(conn: Connection, to: int, data: bytes) -> None:
        if to == side:
            out.extend(decode_payload(p) for p in decoder.feed(data))
    net.taps.append(tap)
    return out


class Mute(Protocol):
    """A peer that never says anything; records whether its connection was closed."""

    lost = False

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


def raw_frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


@pytest.fixture
def net() -> MemoryNetwork:
    return MemoryNetwork(Clock())


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        events.append(event)
    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


# -- handshake ---------------------------------------------------------------------------


def test_handshake_succeeds_and_both_sides_learn_the_peer_id(net: MemoryNetwork) -> None:
    server = Server(net)
    client = net.run(connect(net, node_id="lib-1"))
    assert client.state is State.READY and server.proto.state is State.READY
    assert client.peer_id == "server"
    assert server.proto.peer_id == "lib-1"
    assert net.run(client.call("ping", {"n": 1})) == {"echo": {"n": 1}}


class EagerClient(RPCProtocol):
    """Sends a request right behind its handshake proof, before the server accepted it."""

    def _send(self, mtype: str, rid: int, body: Any) -> None:
        super()._send(mtype, rid, body)
        if mtype == "hello2":
            assert self.transport is not None
            self.transport.write(encode_frame("steal", 1, {"key": b"k"}))


def test_wrong_secret_fails_authentication_closes_and_calls_no_handler(
        net: MemoryNetwork) -> None:
    server = Server(net)
    client = EagerClient(is_client=True, node_id="intruder", cluster=CLUSTER,
                         credentials=Credentials.shared("client", b"wrong"),
                         clock=net.clock)
    net.connect(HOST, PORT, client, name="intruder")
    error = net.fail_of(client.ready)
    assert isinstance(error, AuthenticationFailed)
    assert "secret" in error.message
    net.flush()
    assert net.connections == []
    assert client.state is State.CLOSED and server.proto.state is State.CLOSED
    assert server.calls == []
    assert server.proto.metrics.counters["handshake_failures_total"] >= 1


def test_wrong_secret_through_the_opener_raises_authentication_failed(
        net: MemoryNetwork) -> None:
    server = Server(net)
    error = net.fail_of(connect(net, secret=b"wrong"))
    assert isinstance(error, AuthenticationFailed)
    net.flush()
    assert net.connections == [] and server.calls == []


def test_wrong_cluster_name_fails_naming_both_clusters(net: MemoryNetwork) -> None:
    server = Server(net, cluster="prod")
    error = net.fail_of(connect(net, cluster="staging"))
    assert isinstance(error, AuthenticationFailed)
    assert "'prod'" in error.message and "'staging'" in error.message
    net.flush()
    assert net.connections == []
    assert server.proto.state is State.CLOSED and server.calls == []


def test_handshake_timeout_closes_a_silent_server(net: MemoryNetwork) -> None:
    silent: list[Mute] = []

    class Silent(Factory):
        def buildProtocol(self, addr: Any) -> Mute:
            silent.append(Mute())
            return silent[-1]
    net.listen(HOST, PORT, Silent())
    d = connect(net, timeout=3.0)
    net.advance(2.9)
    assert not d.called
    error = net.fail_of(d, timeout=0.2)
    assert isinstance(error, Timeout)
    assert net.clock.seconds() == pytest.approx(3.0)
    net.flush()
    assert net.connections == [] and silent[0].lost


def test_handshake_timeout_closes_a_silent_client(net: MemoryNetwork) -> None:
    server = Server(net)
    silent = Mute()
    net.connect(HOST, PORT, silent, name="mute")
    net.advance(9.9)
    assert server.proto.state is State.AWAIT_HELLO2 and net.connections
    net.advance(0.2)
    assert server.proto.state is State.CLOSED
    assert net.connections == [] and silent.lost
    assert server.proto.metrics.counters["handshake_failures_total"] == 1


def test_failed_handshake_leaves_no_unhandled_failure_on_the_brick(tmp_path: Path) -> None:
    cluster = SimCluster(tmp_path, n=1)
    built: list[RPCProtocol] = []
    try:
        b = cluster.bricks[0]
        inner = b.factory()

        class Recording(Factory):
            def buildProtocol(self, addr: Any) -> RPCProtocol | None:
                p = inner.buildProtocol(addr)
                assert isinstance(p, RPCProtocol)
                built.append(p)
                return p
        cluster.net.unlisten("127.0.0.1", b.config.brick.port)
        cluster.net.listen("127.0.0.1", b.config.brick.port, Recording(), name=b.id)
        error = cluster.fail_of(cluster.net.opener()(
            cluster.clock, "127.0.0.1", b.config.brick.port, node_id="intruder",
            cluster=cluster.name, secret=b"wrong", max_frame=1 << 20))
        assert isinstance(error, AuthenticationFailed)
        cluster.net.flush()
        assert b.connections == set()
        assert b.metrics.counters["handshake_failures_total"] == 1
        (server_side,) = built
        assert server_side.ready.called
        # A Deferred still holding a Failure nobody consumed is logged as "Unhandled
        # error in Deferred" when it is garbage collected.
        assert not isinstance(getattr(server_side.ready, "result", None), Failure)
    finally:
        for p in built:
            p.ready.addErrback(lambda _: None)     # keep the test's own output clean
        cluster.close()


# -- framing -----------------------------------------------------------------------------


def test_oversize_frame_disconnects_logged_and_counted(net: MemoryNetwork,
                                                       logged: list[LogEvent]) -> None:
    server = Server(net, max_frame=1024)
    client = net.run(connect(net))
    d = client.call("store", {"blob": b"x" * 2000})
    error = net.fail_of(d)
    assert isinstance(error, ConnectionLost)
    assert net.connections == []
    assert server.calls == []
    assert server.proto.metrics.counters["frames_oversize_total"] == 1
    drops = [e for e in logged if e.get("log_format", "").startswith("dropping connection")]
    assert len(drops) == 1
    assert "2" in drops[0]["error"] and "exceeds the limit of 1024 bytes" in drops[0]["error"]


@pytest.mark.parametrize("payload", [
    b"\xc1",                                        # a byte msgpack never uses
    b"\x93\xa3get",                                 # truncated 3-array
    msgpack.packb(["get", 1]),                      # 2-array
    msgpack.packb({"type": "get"}),                 # not an array
    msgpack.packb([7, 1, {}]),                      # type not a string
    msgpack.packb(["get", -1, {}]),                 # negative request id
    msgpack.packb(["get", True, {}]),               # boolean request id
    msgpack.packb(["get", 1, {}]) + b"\x00",        # trailing bytes
], ids=["unused-byte", "truncated", "two-array", "map", "int-type", "negative-rid",
        "bool-rid", "trailing"])
def test_malformed_frame_gets_an_error_reply_and_the_connection_stays_usable(
        net: MemoryNetwork, payload: bytes) -> None:
    server = Server(net)
    client = net.run(connect(net))
    received = frames_to(net, side=0)
    assert client.transport is not None
    client.transport.write(raw_frame(payload))
    net.flush()
    assert len(received) == 1
    mtype, rid, body = received[0]
    assert (mtype, rid) == ("err", 0)
    assert isinstance(from_wire(body), ProtocolError)
    assert server.proto.metrics.counters["frames_malformed_total"] == 1
    assert server.calls == []
    assert net.run(client.call("ping", {"n": 2})) == {"echo": {"n": 2}}
    assert server.calls == [("ping", {"n": 2})]


def test_unknown_message_type_gets_invalid_request(tmp_path: Path) -> None:
    cluster = SimCluster(tmp_path, n=1)
    try:
        conn = cluster.raw(0)
        error = cluster.fail_of(conn.call("frobnicate", {"key": b"k"}))
        assert isinstance(error, InvalidRequest)
        assert "frobnicate" in error.message
        assert cluster.run(conn.call("ping", {})) == {}
    finally:
        cluster.close()


def test_request_to_a_node_without_handler_gets_protocol_error(net: MemoryNetwork) -> None:
    Server(net)
    client = net.run(connect(net))
    # The opener's client protocol has no handler: a request from the server is refused.
    server_side = net.connections[0].protos[1]
    assert isinstance(server_side, RPCProtocol)
    error = net.fail_of(server_side.call("ping", {}))
    assert isinstance(error, ProtocolError)
    assert client.state is State.READY


# -- multiplexing, loss, timeouts --------------------------------------------------------


def test_replies_out_of_order_are_matched_to_their_requests(net: MemoryNetwork) -> None:
    server = Server(net, hold=True)
    client = net.run(connect(net))
    calls = [client.call("work", {"i": i}) for i in range(3)]
    net.flush()
    assert [b["i"] for _, b in server.calls] == [0, 1, 2]
    assert client.outstanding == 3
    for i in (2, 0, 1):
        server.held[i].callback({"result": i * 10})
    results = [net.run(d) for d in calls]
    assert results == [{"result": 0}, {"result": 10}, {"result": 20}]
    assert client.outstanding == 0


def test_pending_calls_fail_with_connection_lost_when_the_connection_drops(
        net: MemoryNetwork) -> None:
    Server(net, hold=True)
    client = net.run(connect(net))
    calls = [client.call("work", {"i": i}) for i in range(2)]
    net.flush()
    net.disconnect(HOST, PORT)
    for d in calls:
        assert isinstance(net.fail_of(d), ConnectionLost)
    assert client.state is State.CLOSED
    assert isinstance(net.fail_of(client.call("work", {})), ConnectionLost)
    assert isinstance(net.fail_of(connect(net)), errors.Unavailable)


def test_call_timeout_fires_timeout_and_a_late_reply_is_ignored(net: MemoryNetwork) -> None:
    server = Server(net, hold=True)
    client = net.run(connect(net))
    d = client.call("slow", {}, timeout=2.0)
    net.advance(1.9)
    assert not d.called
    net.advance(0.1)
    error = net.fail_of(d, timeout=0)
    assert isinstance(error, Timeout) and "slow" in error.message
    assert client.outstanding == 0
    server.held[0].callback({"late": True})
    net.flush()                     # the late reply arrives and is dropped quietly
    assert client.state is State.READY and client.outstanding == 0
    d2 = client.call("fast", {}, timeout=2.0)
    net.flush()
    server.held[1].callback({"ok": 1})
    assert net.run(d2) == {"ok": 1}


def test_calls_in_flight_share_one_timer_which_ends_once_they_are_answered(
        net: MemoryNetwork) -> None:
    Server(net)
    client = net.run(connect(net))
    before = len(net.clock.getDelayedCalls())
    calls = [client.call("ping", {"i": i}, timeout=5.0) for i in range(10)]
    # One deadline sweep for all ten (and the end-of-iteration flush of their frame).
    assert len(net.clock.getDelayedCalls()) <= before + 2
    assert [net.run(d) for d in calls] == [{"echo": {"i": i}} for i in range(10)]
    net.advance(5.0)                 # the sweep finds nothing due and is not renewed
    assert len(net.clock.getDelayedCalls()) == before
    assert client.outstanding == 0


# -- property tests: codec and garbage ---------------------------------------------------

_scalars = (st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 64 - 1)
            | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=40))
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20)
_envelopes = st.tuples(st.text(min_size=1, max_size=16), st.integers(0, 2 ** 64 - 1),
                       _values)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@given(st.lists(_envelopes, min_size=1, max_size=5), st.lists(st.integers(0, 10 ** 6),
                                                              max_size=8))
def test_frames_round_trip_through_any_chunking(envelopes: list[tuple[str, int, Any]],
                                                cuts: list[int]) -> None:
    stream = b"".join(encode_frame(*e) for e in envelopes)
    decoder = FrameDecoder(1 << 20)
    got = [decode_payload(p) for chunk in _chunks(stream, cuts) for p in decoder.feed(chunk)]
    assert got == [tuple(e) for e in envelopes]
    assert decoder.buffered == 0


@given(st.integers(0, 1 << 30), st.integers(1, 1 << 20))
def test_the_decoder_refuses_a_length_prefix_over_the_limit_before_buffering(
        n: int, limit: int) -> None:
    decoder = FrameDecoder(limit)
    header = n.to_bytes(4, "big")
    if n > limit:
        with pytest.raises(FrameTooLarge):
            list(decoder.feed(header))
    else:
        assert list(decoder.feed(header)) == ([b""] if n == 0 else [])


_WIRE_ERRORS = [c for c in vars(errors).values()
                if isinstance(c, type) and issubclass(c, DDSError)]


@given(st.sampled_from(_WIRE_ERRORS), st.text(max_size=30), _values)
def test_errors_round_trip_over_the_wire(cls: type[DDSError], message: str,
                                         data: Any) -> None:
    sent = cls(message, data)
    frame = encode_frame("err", 5, sent.to_wire())
    (payload,) = FrameDecoder().feed(frame)
    _, _, body = decode_payload(payload)
    back = from_wire(body)
    assert type(back) is cls
    assert back.message == sent.message and back.data == data


def test_frame_too_large_is_rebuilt_as_a_protocol_error_by_the_peer() -> None:
    back = from_wire(FrameTooLarge("frame of 2000 bytes exceeds the limit").to_wire())
    assert isinstance(back, ProtocolError)


def _valid_frame() -> st.SearchStrategy[bytes]:
    return _envelopes.map(lambda e: encode_frame(*e))


_garbage_piece = st.one_of(
    st.binary(max_size=64),                                     # noise
    _valid_frame(),                                             # a well-formed frame
    st.binary(max_size=32).map(raw_frame),                      # framed noise
    st.integers(0, 2 ** 32 - 1).map(lambda n: n.to_bytes(4, "big")),   # a bare length
)


def _expected_calls(stream: bytes, max_frame: int) -> list[tuple[str, Any]]:
    """What a READY server may hand its handler: every decodable frame that is not a
    reply, in order, up to the first oversize length prefix."""
    decoder = FrameDecoder(max_frame)
    out: list[tuple[str, Any]] = []
    try:
        for payload in decoder.feed(stream):
            try:
                mtype, _rid, body = decode_payload(payload)
            except ProtocolError:
                continue
            if mtype == BATCH:      # a batch's messages, if every one of them is well formed
                if type(body) is list and len(body) == 3 * _rid and all(
                        type(body[i]) is str and body[i] != BATCH
                        and type(body[i + 1]) is int and body[i + 1] >= 0
                        for i in range(0, len(body), 3)):
                    out.extend((body[i], body[i + 2]) for i in range(0, len(body), 3)
                               if body[i] not in ("ok", "err"))
            elif mtype not in ("ok", "err"):
                out.append((mtype, body))
    except FrameTooLarge:
        pass
    return out


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(_garbage_piece, max_size=8), st.lists(st.integers(0, 10 ** 6), max_size=6),
       st.booleans())
@example([raw_frame(msgpack.packb(["*", 0, 0]))], [], True)    # a batch frame, malformed
@example([raw_frame(msgpack.packb(["*", 1, ["work", 3, {"b": 1}]]))], [], True)
def test_garbage_never_escapes_data_received_nor_reaches_the_handler_undecoded(
        pieces: list[bytes], cuts: list[int], handshake_done: bool) -> None:
    net = MemoryNetwork(Clock())
    server = Server(net, max_frame=4096)
    if handshake_done:
        client = net.run(connect(net))
        assert client.state is State.READY
    else:
        net.connect(HOST, PORT, Mute(), name="noise")
        net.flush()
    proto = server.proto
    stream = b"".join(pieces)
    for chunk in _chunks(stream, cuts):
        proto.dataReceived(chunk)           # must never raise
    net.flush()                             # replies reach the client without harm
    for mtype, _body in server.calls:
        assert isinstance(mtype, str)
    if handshake_done:
        assert server.calls == _expected_calls(stream, 4096)
    else:
        assert server.calls == []           # nothing passes before authentication
    assert net.errors == []


@settings(max_examples=50, deadline=None)
@given(st.lists(_values, min_size=1, max_size=5), st.lists(st.integers(0, 10 ** 6),
                                                           max_size=8))
def test_requests_split_across_reads_in_any_way_are_handled_in_order(
        bodies: list[Any], cuts: list[int]) -> None:
    """The protocol's own framing (frames decoded straight from each read, a partial
    one kept for the next) gives every request whole and in order."""
    net = MemoryNetwork(Clock())
    server = Server(net)
    client = net.run(connect(net))
    assert client.transport is not None
    stream = b"".join(encode_frame("work", 1000 + i, {"b": b}) for i, b in enumerate(bodies))
    for chunk in _chunks(stream, cuts):
        client.transport.write(chunk)
        net.flush()
    assert server.calls == [("work", {"b": b}) for b in bodies]
    assert server.proto._buf == bytearray()
    assert net.run(client.call("ping", {})) == {"echo": {}}


# -- batching ------------------------------------------------------------------------------


def test_the_messages_of_a_turn_go_to_a_peer_in_one_frame(net: MemoryNetwork) -> None:
    server = Server(net)
    client = net.run(connect(net))
    to_server, to_client = frames_to(net, side=1), frames_to(net, side=0)
    calls = [client.call("work", {"i": i}) for i in range(3)]
    assert [net.run(d) for d in calls] == [{"echo": {"i": i}} for i in range(3)]
    assert [(t, n) for t, n, _ in to_server] == [("*", 3)]
    assert [(t, n) for t, n, _ in to_client] == [("*", 3)]
    assert server.calls == [("work", {"i": i}) for i in range(3)]
    one = client.call("work", {"i": 9})             # a lone message: a plain frame
    assert net.run(one) == {"echo": {"i": 9}}
    assert [t for t, _n, _ in to_server[1:]] == ["work"]


class OldClient(RPCProtocol):
    """A client of a version without batch frames: its handshake does not offer them."""

    def _send(self, mtype: str, rid: int, body: Any) -> None:
        if isinstance(body, dict):
            body.pop("features", None)
        super()._send(mtype, rid, body)


def test_a_peer_that_does_not_offer_batches_gets_a_frame_per_message(
        net: MemoryNetwork) -> None:
    server = Server(net)
    client = OldClient(is_client=True, node_id="old", cluster=CLUSTER,
                       credentials=Credentials.shared("client", SECRET), clock=net.clock)
    net.connect(HOST, PORT, client, name="old")
    net.run(client.ready)
    to_client = frames_to(net, side=0)
    calls = [client.call("work", {"i": i}) for i in range(3)]
    assert [net.run(d) for d in calls] == [{"echo": {"i": i}} for i in range(3)]
    assert [t for t, _n, _ in to_client] == ["ok", "ok", "ok"]
    assert len(server.calls) == 3


def test_a_malformed_batch_is_answered_as_malformed_and_handles_nothing(
        net: MemoryNetwork) -> None:
    server = Server(net)
    client = net.run(connect(net))
    received = frames_to(net, side=0)
    assert client.transport is not None
    client.transport.write(encode_frame("*", 2, ["work", 1, {}, 7, 2, {}]))
    net.flush()
    assert [(t, n) for t, n, _ in received] == [("err", 0)]
    assert isinstance(from_wire(received[0][2]), ProtocolError)
    assert server.calls == []
    assert server.proto.metrics.counters["frames_malformed_total"] == 1
    assert net.run(client.call("ping", {})) == {"echo": {}}
