"""The TLS transport DDS runs on: the standard library's ``ssl`` over memory BIOs, as a
Twisted protocol between the TCP connection and ``RPCProtocol``.

Why not Twisted's TLS (``twisted.protocols.tls`` on pyOpenSSL): measured here, one small
record costs 22.9 µs to encrypt, pass and decrypt through pyOpenSSL and 5.7 µs through
``ssl.SSLObject`` (both OpenSSL underneath; the difference is pyOpenSSL's Python-level
calls and exceptions).  A get is a record each way, so that difference was most of what
TLS cost a get.  Twisted's transport also holds small writes for a reactor turn and
queues the encrypted bytes for one more, which ``RPCProtocol`` (one frame per peer and
turn) does not need.  Here a frame is encrypted when written and sent at once when the
socket takes it (``dds.rpcframing._write``), as on a plain connection.

The handshake runs as soon as the connection is made; what the protocol above writes
before it completes waits in a list.  A failed handshake ends the connection with the
``ssl.SSLError`` as the reason, which ``dds.rpc`` turns into an error naming the problem.
"""

from __future__ import annotations

import ssl
from typing import Any

from cryptography import x509
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from dds.rpcframing import _write

__all__ = ["TLSTransport"]

_READ = 1 << 16


class TLSTransport(Protocol):
    """TLS for ``inner``: the TCP connection's protocol, and ``inner``'s transport."""

    def __init__(self, context: ssl.SSLContext, server_side: bool, inner: IProtocol) -> None:
        self.context = context
        self.server_side = server_side
        self.inner = inner
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self._handshaking = True
        self._held: list[bytes] = []
        self._error: ssl.SSLError | None = None
        self._closing = False

    # -- the TCP side ---------------------------------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        self.inner.makeConnection(self)  # type: ignore[arg-type]
        if not self.server_side:
            self._handshake()

    def dataReceived(self, data: bytes) -> None:
        self._incoming.write(data)
        if self._handshaking:
            self._handshake()
            if self._handshaking:
                return
        self._read()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        if self._error is not None:
            reason = Failure(self._error)
        self.inner.connectionLost(reason)

    def _handshake(self) -> None:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._send()
            return
        except ssl.SSLError as e:
            self._fail(e)
            return
        self._handshaking = False
        self._send()
        held, self._held = self._held, []
        for data in held:
            self.write(data)
        if self._closing:
            self.loseConnection()
            return
        self._read()

    def _read(self) -> None:
        chunks = []
        try:
            while True:
                data = self._tls.read(_READ)
                if not data:        # the peer closed the TLS session
                    break
                chunks.append(data)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as e:
            self._fail(e)
            return
        if self._outgoing.pending:      # a TLS 1.3 ticket or key update to answer
            self._send()
        if chunks:
            self.inner.dataReceived(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def _send(self) -> None:
        data = self._outgoing.read()
        if data and self.transport is not None:
            _write(self.transport, data)

    def _fail(self, error: ssl.SSLError) -> None:
        self._error = error
        self._send()            # the alert, so that the peer learns why
        if self.transport is not None:
            self.transport.loseConnection()

    # -- the transport the protocol above sees ---------------------------------------------

    def write(self, data: bytes) -> None:
        if self._error is not None or self.transport is None:
            return
        if self._handshaking:
            self._held.append(bytes(data))
            return
        try:
            self._tls.write(data)
        except ssl.SSLError as e:
            self._fail(e)
            return
        self._send()

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self.transport is None:
            return
        if self._handshaking and self._error is None:
            self._closing = True         # after what is held has been sent
            if not self._held:
                self.transport.loseConnection()
            return
        if self._error is None:
            try:
                self._tls.unwrap()
            except ssl.SSLError:
                pass
            self._send()
        self.transport.loseConnection()

    def abortConnection(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def getPeer(self) -> Any:
        return self.transport.getPeer()  # type: ignore[union-attr]

    def getHost(self) -> Any:
        return self.transport.getHost()  # type: ignore[union-attr]

    def getPeerCertificate(self) -> x509.Certificate | None:
        """The peer's certificate, once the handshake is done (``dds.tls.peer_identity``)."""
        if self._handshaking:
            return None
        der = self._tls.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der) if der else None

    @property
    def disconnecting(self) -> bool:
        return bool(getattr(self.transport, "disconnecting", False))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)  # type: ignore[union-attr]

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()  # type: ignore[union-attr]

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]
