"""dds.tlswire.TLSTransport over real loopback sockets: the handshake, what the protocol
above writes before it ends, large writes, the peer's certificate, and failures."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from dds import tls
from dds.tlswire import TLSTransport

from tests.unit.test_tls import CA


class Echo(Protocol):
    """Writes a greeting as soon as it is connected (before any handshake ended), then
    echoes."""

    def connectionMade(self) -> None:
        self.transport.write(b"hello:")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class Collect(Protocol):
    def __init__(self, want: int) -> None:
        self.want = want
        self.got = bytearray()
        self.done: Deferred[bytes] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.got += data
        if len(self.got) >= self.want and not self.done.called:
            self.done.callback(bytes(self.got))

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        if not self.lost.called:
            self.reason = reason
            self.lost.callback(None)


async def _serve(server_files: tls.TLSFiles) -> Any:
    context = tls.ssl_context(server_files, server=True)

    class F(Factory):
        def buildProtocol(self, addr: Any) -> Protocol:
            return TLSTransport(context, True, Echo())
    return await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(F())


async def _connect(port: int, client_files: tls.TLSFiles, inner: Protocol) -> TLSTransport:
    transport = TLSTransport(tls.ssl_context(client_files, server=False), False, inner)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), transport)
    return transport


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return CA(tmp_path / "ca")


@pytest_twisted.ensureDeferred
async def test_a_greeting_written_before_the_handshake_and_a_large_echo_arrive(
        ca: CA) -> None:
    listening = await _serve(ca.files("brick", "b1"))
    payload = bytes(range(256)) * 12_288                 # 3 MiB: many TLS records
    inner = Collect(len(b"hello:") + len(payload))
    try:
        transport = await _connect(listening.getHost().port, ca.files("client", "c1"), inner)
        transport.write(payload)
        got = await inner.done
        assert got == b"hello:" + payload
        peer = transport.getPeerCertificate()
        assert peer is not None and tls.identity_of(peer).id == "b1"
        transport.loseConnection()
        await inner.lost
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_failed_handshake_ends_the_connection_with_the_ssl_error(
        ca: CA, tmp_path: Path) -> None:
    listening = await _serve(ca.files("brick", "b1"))
    stranger = CA(tmp_path / "stranger").files("client", "c1")
    inner = Collect(1)
    try:
        await _connect(listening.getHost().port, stranger, inner)
        await inner.lost
        assert inner.reason is not None and inner.reason.check(ssl.SSLError)
        assert not inner.done.called
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_no_peer_certificate_is_given_before_the_handshake_ends(ca: CA) -> None:
    transport = TLSTransport(tls.ssl_context(ca.files("client", "c1"), server=False),
                             False, Protocol())
    assert transport.getPeerCertificate() is None
