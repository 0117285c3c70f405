"""The brick's RPC port: admission caps, then (TLS mode) TLS, then an ``RPCProtocol``
whose handler is the brick's dispatch; and the warning about its certificate's expiry.

Kept apart from ``bricks/server.py`` (the dispatch and the hot path) as Tahoe keeps a
server's wire face apart from its logic: nothing here decides what a request does.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from dds.config import BrickConfig
from dds.metrics import Metrics
from dds.rpc import RPCProtocol

from dds.bricks.admission import Admission, tls_sniffing_factory

#: How often the certificate's expiry is checked (and warned about, when near).
CERT_CHECK_S = 6 * 3600.0


class _BrickFactory(Factory):
    noisy = False

    def __init__(self, brick_id: str, config: BrickConfig, clock: IReactorTime,
                 metrics: Metrics, admission: Admission, handler: Callable[..., Any],
                 connections: set[RPCProtocol]) -> None:
        self.brick_id = brick_id
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self.admission = admission
        self.handler = handler
        self.connections = connections

    def buildProtocol(self, addr: Any) -> RPCProtocol | None:
        source = str(getattr(addr, "host", "?"))
        if not self.admission.admit(source):
            return None         # Twisted closes the connection at once
        config = self.config
        proto = RPCProtocol(is_client=False, node_id=self.brick_id,
                            cluster=config.cluster.name, credentials=config.credentials,
                            clock=self.clock, handler=self.handler,
                            max_frame=config.limits.max_frame_bytes, metrics=self.metrics,
                            handshake_timeout=config.auth.handshake_timeout_ms / 1000.0,
                            max_unsent_bytes=config.limits.max_unsent_bytes)
        # Handshake failures are logged and counted by the protocol; nobody awaits a
        # server's ``ready``, so consume its failure here.
        release = self.admission.releaser(source)
        proto.ready.addCallbacks(release, release)
        proto.ready.addErrback(lambda _: None)
        self.connections.add(proto)
        proto.closed.addCallback(lambda _: self.connections.discard(proto))
        proto.closed.addBoth(release)
        return proto


def rpc_factory(brick_id: str, config: BrickConfig, clock: IReactorTime, metrics: Metrics,
                admission: Admission, handler: Callable[..., Any],
                connections: set[RPCProtocol]) -> Factory:
    """The RPC port's factory: admission caps, then (TLS mode) TLS, then RPC.  Every
    connection is kept in ``connections`` while open."""
    factory = _BrickFactory(brick_id, config, clock, metrics, admission, handler,
                            connections)
    tls = config.credentials.tls
    if tls is None:
        return factory
    return tls_sniffing_factory(factory, tls, metrics, clock)


class CertificateWatch:
    """Warn, at start and every six hours, when the brick's certificate (or its CA)
    expires within ``auth.cert_warn_days``: an expired one stops the cluster."""

    log = Logger()

    def __init__(self, brick_id: str, config: BrickConfig, clock: IReactorTime,
                 metrics: Metrics) -> None:
        self.brick_id = brick_id
        self.config = config
        self.metrics = metrics
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock
        tls = config.credentials.tls
        if tls is not None:
            from dds.tls import seconds_to_expiry
            metrics.gauge("tls_cert_expiry_seconds", lambda: seconds_to_expiry(tls))

    def start(self) -> None:
        if self.config.credentials.tls is not None:
            self._loop.start(CERT_CHECK_S, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def check(self) -> None:
        tls = self.config.credentials.tls
        if tls is None:
            return
        from dds.tls import seconds_to_expiry
        left = seconds_to_expiry(tls)
        if left < self.config.auth.cert_warn_days * 86400:
            self.metrics.inc("tls_cert_expiry_warnings_total")
            self.log.warn("the TLS certificate of brick {brick} ({path}) or its CA expires "
                          "in {days:.1f} days: issue a new one (dds-admin certs issue)",
                          brick=self.brick_id, path=str(tls.paths.cert), days=left / 86400)
