"""The fault proxy's modes, against a frame-echo server standing in for a brick."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import msgpack
import pytest

from tests.faults.cluster import free_ports
from tests.faults.proxy import CLIENT, ProxyPool, Rule
from tests.harness.processes import wait_until

QUIET_S = 0.3   # how long "nothing arrives" is watched for


def frame(obj: object) -> bytes:
    payload = msgpack.packb(obj, use_bin_type=True)
    return len(payload).to_bytes(4, "big") + payload


def hello2(node: str) -> bytes:
    return frame(["hello2", 0, {"node": node, "proto": 1}])


class EchoBrick(socketserver.ThreadingTCPServer):
    """Echoes every byte back and remembers what it received."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int) -> None:
        self.received = bytearray()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Echo)


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, EchoBrick)
        while True:
            try:
                data = self.request.recv(65536)
            except OSError:
                return
            if not data:
                return
            with server.lock:
                server.received += data
            self.request.sendall(data)


class Setup:
    def __init__(self) -> None:
        brick_port, proxy_port = free_ports(2)
        self.brick = EchoBrick(brick_port)
        threading.Thread(target=self.brick.serve_forever, daemon=True).start()
        self.pool = ProxyPool()
        self.pool.add("b1", proxy_port, brick_port)
        self.pool.add("b2", free_ports(1)[0], free_ports(1)[0])   # only so "b2" is known
        self.port = proxy_port
        self.socks: list[socket.socket] = []

    def connect(self, node: str = "lib-1") -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.socks.append(s)
        s.sendall(hello2(node))
        assert recv_exact(s, len(hello2(node))) == hello2(node)   # identified, echoed
        return s

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.pool.close()
        self.brick.shutdown()
        self.brick.server_close()

    def received(self) -> bytes:
        with self.brick.lock:
            return bytes(self.brick.received)


def recv_exact(s: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    s.settimeout(timeout)
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def nothing_arrives(s: socket.socket) -> bool:
    s.settimeout(QUIET_S)
    try:
        s.recv(1)           # data, or b"" for a closed connection: something happened
    except TimeoutError:
        return True
    return False


@pytest.fixture
def setup() -> Iterator[Setup]:
    st = Setup()
    yield st
    st.close()


def test_pass_forwards_both_ways(setup: Setup) -> None:
    s = setup.connect()
    s.sendall(frame(["get", 1, {"key": b"k"}]))
    assert recv_exact(s, len(frame(["get", 1, {"key": b"k"}]))) == frame(
        ["get", 1, {"key": b"k"}])


def test_drop_is_a_blackhole_and_the_stream_survives_healing(setup: Setup) -> None:
    s = setup.connect()
    setup.pool.set("b1", Rule("drop"))
    s.sendall(frame(["lost", 1, {}]))
    assert nothing_arrives(s)
    fresh = socket.create_connection(("127.0.0.1", setup.port), timeout=5)
    setup.socks.append(fresh)          # accepted, but nothing is forwarded
    fresh.sendall(hello2("lib-2"))
    assert nothing_arrives(fresh)
    assert setup.pool.stats("b1").dropped >= 2
    setup.pool.heal()
    s.sendall(frame(["kept", 2, {}]))
    assert recv_exact(s, len(frame(["kept", 2, {}]))) == frame(["kept", 2, {}])


def test_delay_holds_frames_and_keeps_order(setup: Setup) -> None:
    s = setup.connect()
    setup.pool.set("b1", Rule("delay", 150))
    frames = [frame(["f", i, {}]) for i in range(5)]
    t0 = time.monotonic()
    s.sendall(b"".join(frames))
    assert recv_exact(s, sum(map(len, frames))) == b"".join(frames)
    assert time.monotonic() - t0 >= 0.3     # 150 ms each way


def test_cut_in_loses_requests_only(setup: Setup) -> None:
    s = setup.connect()
    before = len(setup.received())
    setup.pool.set("b1", Rule("cut_in"))
    s.sendall(frame(["req", 1, {}]))
    assert nothing_arrives(s)
    assert len(setup.received()) == before


def test_cut_out_loses_replies_only(setup: Setup) -> None:
    s = setup.connect()
    before = len(setup.received())
    setup.pool.set("b1", Rule("cut_out"))
    s.sendall(frame(["req", 1, {}]))
    wait_until(lambda: len(setup.received()) > before, 5, "the request to reach the brick")
    assert nothing_arrives(s)


def test_refuse_closes_open_and_new_connections(setup: Setup) -> None:
    s = setup.connect()
    setup.pool.set("b1", Rule("refuse"))
    s.settimeout(5)
    assert s.recv(1) == b""
    fresh = socket.create_connection(("127.0.0.1", setup.port), timeout=5)
    setup.socks.append(fresh)
    assert fresh.recv(1) == b""
    setup.pool.heal()
    setup.connect()


def test_rules_per_source(setup: Setup) -> None:
    peer = setup.connect("b2")          # a known brick id
    client = setup.connect("lib-9")     # anything else is a client
    setup.pool.set("b1", Rule("drop"), ["b2"])
    peer.sendall(frame(["gossip", 1, {}]))
    client.sendall(frame(["get", 1, {}]))
    assert recv_exact(client, len(frame(["get", 1, {}]))) == frame(["get", 1, {}])
    assert nothing_arrives(peer)
    setup.pool.set("b1", Rule("drop"), [CLIENT])
    client.sendall(frame(["get", 2, {}]))
    assert nothing_arrives(client)
