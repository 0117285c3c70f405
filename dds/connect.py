"""Opening authenticated RPC connections, shared by bricks (to peers), the library and
``dds-admin``: plain TCP with the shared-secret handshake, or mutual TLS (``dds.tls``)."""

from __future__ import annotations

import errno
import ipaddress
import os
from typing import Any, Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (HostnameEndpoint, TCP4ClientEndpoint,
                                        TCP6ClientEndpoint, connectProtocol)
from twisted.internet.interfaces import IReactorTCP, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger

from dds.auth import Credentials
from dds.errors import DDSError, Unavailable
from dds.metrics import Metrics
from dds.rpc import Handler, RPCProtocol

log = Logger()


def credentials_of(credentials: Credentials | None, secret: bytes | str | None,
                   role: str) -> Credentials:
    """``credentials``, or a shared secret for ``role``: the short form callers use."""
    if credentials is not None:
        return credentials
    if secret is None:
        raise ValueError("give credentials= or secret=")
    return Credentials.shared(role, secret)


async def open_connection(reactor: Any, host: str, port: int, *, node_id: str,
                          cluster: str, max_frame: int,
                          credentials: Credentials | None = None,
                          secret: bytes | str | None = None, role: str = "client",
                          timeout: float = 5.0, handler: Handler | None = None,
                          metrics: Metrics | None = None) -> RPCProtocol:
    """Connect and complete the handshake as ``credentials`` (or as ``role`` with its
    shared ``secret``); ``Unavailable`` names the address on failure,
    ``AuthenticationFailed`` on a wrong secret, certificate or cluster."""
    clock: IReactorTime = reactor
    creds = credentials_of(credentials, secret, role)
    proto = RPCProtocol(is_client=True, node_id=node_id, cluster=cluster, credentials=creds,
                        clock=clock, handler=handler, max_frame=max_frame, metrics=metrics,
                        handshake_timeout=timeout)
    endpoint = _endpoint(reactor, host, port, timeout)
    try:
        if creds.tls is None:
            await connectProtocol(endpoint, proto)
        else:
            from dds.tlswire import TLSTransport
            await connectProtocol(endpoint, TLSTransport(_client_tls(creds.tls), False,
                                                         proto))
    except Exception as e:
        raise Unavailable(f"cannot connect to {host}:{port}: {_reason(e)}") from None
    try:
        await proto.ready
    except DDSError:
        proto.close()
        raise
    return proto


#: TLS client contexts by the files they were made of: a context costs far more than a
#: connection, so each process makes one per set of credentials.
_tls_options: dict[int, tuple[Any, Any]] = {}


def _client_tls(files: Any) -> Any:
    hit = _tls_options.get(id(files))
    if hit is None or hit[0] is not files:
        from dds.tls import ssl_context
        hit = _tls_options[id(files)] = (files, ssl_context(files, server=False))
    return hit[1]


def _endpoint(reactor: Any, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    """An IP address is connected to directly: ``HostnameEndpoint`` waits 0.3 s before it
    reports a refused connection (it races address families), and a dead member is then
    excluded, or a recovery source given up, that much later."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return HostnameEndpoint(reactor, host, port, timeout=timeout)
    if ip.version == 6:
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)


def _reason(e: BaseException) -> str:
    """``[Errno 111] Connection refused``, not ``111``."""
    os_error = getattr(e, "osError", None)
    if isinstance(os_error, int):
        return f"{errno.errorcode.get(os_error, os_error)} ({os.strerror(os_error)})"
    return str(os_error or e)


#: How connections are opened: ``open_connection`` over TCP, or an in-memory network in
#: protocol tests and the deterministic simulation.  Called as
#: ``opener(reactor, host, port, node_id=…, cluster=…, credentials=…, max_frame=…,
#: metrics=…)``.
Opener = Callable[..., Awaitable[RPCProtocol]]


class ConnectionCache:
    """One multiplexed connection per address, opened on demand and reopened after loss.
    Concurrent callers for the same address share one connection attempt."""

    def __init__(self, reactor: IReactorTCP, opener: Opener | None = None,
                 **options: Any) -> None:
        self.reactor = reactor
        self.opener: Opener = opener or open_connection
        self.options = options
        self._conns: dict[tuple[str, int], RPCProtocol] = {}
        self._opening: dict[tuple[str, int], list[Deferred[RPCProtocol]]] = {}

    def cached(self, host: str, port: int) -> RPCProtocol | None:
        return self._conns.get((host, port))

    @property
    def open(self) -> dict[tuple[str, int], RPCProtocol]:
        """The open connections by address (read-only use: the hot path of reads)."""
        return self._conns

    async def get(self, host: str, port: int) -> RPCProtocol:
        addr = (host, port)
        proto = self._conns.get(addr)
        if proto is not None:
            return proto
        # Each caller waits on a Deferred of its own: a caller that gives up (its
        # Deferred is cancelled on a timeout) must not cancel the shared attempt.
        waiter: Deferred[RPCProtocol] = Deferred()
        waiters = self._opening.get(addr)
        if waiters is None:
            self._opening[addr] = [waiter]
            Deferred.fromCoroutine(self._open(addr))
        else:
            waiters.append(waiter)
        return await waiter

    async def _open(self, addr: tuple[str, int]) -> None:
        try:
            proto = await self.opener(self.reactor, addr[0], addr[1], **self.options)
        except Exception as e:
            for w in self._opening.pop(addr, []):
                w.errback(e)        # ignored by a waiter already cancelled
            return
        self._conns[addr] = proto
        proto.closed.addCallback(lambda _: self._lost(addr, proto))
        for w in self._opening.pop(addr, []):
            w.callback(proto)

    def _lost(self, addr: tuple[str, int], proto: RPCProtocol) -> None:
        if self._conns.get(addr) is proto:
            del self._conns[addr]

    def close_all(self) -> list[Deferred[None]]:
        closing = []
        for proto in list(self._conns.values()):
            closing.append(proto.closed)
            proto.close()
        self._conns.clear()
        return closing
