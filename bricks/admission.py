"""What a stranger may hold of a brick before it has authenticated (DESIGN §10).

Every connection is a stranger until its handshake is done.  Strangers are capped per
brick and per source address: past a cap a new connection is closed at once, counted,
and logged at a bounded rate, so a flood of half-open connections costs a bounded amount
of memory, file descriptors and log.

In TLS mode the RPC port also answers a plain-text peer with a plain error that names
the problem, instead of leaving it waiting for a TLS handshake that never comes.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from dds.codec import encode_frame
from dds.errors import ProtocolError
from dds.metrics import Metrics
from dds.ratelimit import LogLimiter

__all__ = ["Admission", "tls_sniffing_factory"]

log = Logger()


class Admission:
    """Counts of connections still authenticating, in all and per source address."""

    def __init__(self, max_total: int, max_per_source: int, metrics: Metrics,
                 clock: IReactorTime | None = None) -> None:
        self.max_total = max_total
        self.max_per_source = max_per_source
        self.metrics = metrics
        self.total = 0
        self.by_source: Counter[str] = Counter()
        self._log = LogLimiter(clock, log) if clock is not None else None
        metrics.gauge("connections_unauthenticated", lambda: self.total)

    def admit(self, source: str) -> bool:
        """Whether a new connection from ``source`` may start authenticating; a refusal
        is counted (and logged at a bounded rate)."""
        if self.total >= self.max_total:
            why = f"{self.total} connections are already authenticating"
        elif self.by_source[source] >= self.max_per_source:
            why = f"{self.by_source[source]} connections from {source} are authenticating"
        else:
            self.total += 1
            self.by_source[source] += 1
            return True
        self.metrics.inc("connections_refused_total")
        if self._log is not None:
            self._log.warn("refused a connection from {source}: {why}", source=source,
                           why=why)
        return False

    def releaser(self, source: str) -> Callable[[Any], Any]:
        """A callback (result passed through) that releases ``source``'s place once,
        however many times it is called: at the end of the handshake or of the
        connection, whichever comes first."""
        released = [False]

        def release(result: Any) -> Any:
            if not released[0]:
                released[0] = True
                self.total -= 1
                self.by_source[source] -= 1
                if self.by_source[source] <= 0:
                    del self.by_source[source]
            return result
        return release


class _Sniff(Protocol):
    """The first byte tells a TLS ClientHello (0x16) from a plain-text DDS client; the
    plain one gets an error frame it can read, then the connection closes."""

    def __init__(self, inner: Protocol, metrics: Metrics, limited: LogLimiter | None) -> None:
        self.inner = inner
        self.metrics = metrics
        self.limited = limited
        self.decided = False
        self.refused = False

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        self.inner.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            return
        if not self.decided:
            if data[:1] != b"\x16":
                self.refused = True
                self.metrics.inc("handshake_failures_total")
                self.metrics.inc("tls_plaintext_refused_total")
                error = ProtocolError("this brick requires TLS (auth.mode = \"tls\"): "
                                      "connect with a certificate from the cluster's CA")
                if self.limited is not None:
                    peer = self.transport.getPeer()  # type: ignore[union-attr]
                    self.limited.warn("refused a plain-text connection from {peer} on the "
                                      "TLS port", peer=f"{getattr(peer, 'host', '?')}")
                self.transport.write(encode_frame("err", 0, error.to_wire()))  # type: ignore[union-attr]
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            self.decided = True
        self.inner.dataReceived(data)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.inner.connectionLost(reason)


def tls_sniffing_factory(rpc_factory: Factory, files: Any, metrics: Metrics,
                         clock: IReactorTime | None = None) -> Factory:
    """``rpc_factory`` behind mutual TLS (``dds.tlswire``, ``dds.tls.ssl_context``), on
    the same port that plain mode uses; admission stays ``rpc_factory``'s, decided as the
    TCP connection is accepted, before any TLS work."""
    from dds.tls import ssl_context
    from dds.tlswire import TLSTransport
    context = ssl_context(files, server=True)
    limited = LogLimiter(clock, log) if clock is not None else None

    class SniffingFactory(Factory):
        noisy = False

        def buildProtocol(self, addr: Any) -> Protocol | None:
            rpc = rpc_factory.buildProtocol(addr)
            if rpc is None:
                return None
            return _Sniff(TLSTransport(context, True, rpc), metrics, limited)

    return SniffingFactory()
