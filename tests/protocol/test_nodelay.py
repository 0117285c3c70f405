"""Every RPC connection over real TCP has Nagle's algorithm off, on both ends.

A one-way frame (a COMMIT, a map hint) written while an earlier frame is unacknowledged
would otherwise wait for the peer's delayed ACK.  What the kernel holds back cannot be
asserted without timing, so the tests read the socket option the kernel applies.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory

from dds.auth import Credentials
from dds.connect import open_connection
from dds.rpc import RPCProtocol

CLUSTER = "dds"
SECRET = b"c" * 32
reactor: Any = _reactor


def _nodelay(transport: Any) -> int:
    tcp = transport if hasattr(transport, "getHandle") else transport.transport
    return int(tcp.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


class _Brickish(Factory):
    """A listener speaking the brick's side of the handshake; remembers its protocols."""

    def __init__(self) -> None:
        self.made: list[RPCProtocol] = []
        self.first: Deferred[RPCProtocol] = Deferred()

    def buildProtocol(self, addr: Any) -> RPCProtocol:
        creds = Credentials("brick", {"client": SECRET, "admin": b"a" * 32,
                                      "brick": b"b" * 32})
        proto = RPCProtocol(is_client=False, node_id="b1", cluster=CLUSTER,
                            credentials=creds, clock=reactor)
        self.made.append(proto)
        if not self.first.called:
            self.first.callback(proto)
        return proto


@pytest_twisted.ensureDeferred
async def test_client_connection_has_nagle_off() -> None:
    factory = _Brickish()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        conn = await open_connection(reactor, "127.0.0.1", port.getHost().port,
                                     node_id="t", cluster=CLUSTER, max_frame=1 << 20,
                                     secret=SECRET)
        assert _nodelay(conn.transport) == 1
        conn.transport.loseConnection()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_accepted_connection_has_nagle_off() -> None:
    factory = _Brickish()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        conn = await open_connection(reactor, "127.0.0.1", port.getHost().port,
                                     node_id="t", cluster=CLUSTER, max_frame=1 << 20,
                                     secret=SECRET)
        server = await factory.first
        assert _nodelay(server.transport) == 1
        conn.transport.loseConnection()
    finally:
        await port.stopListening()
