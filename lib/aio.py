"""``AsyncDDSClient``: DDS for services on asyncio (FastAPI, aiohttp, plain ``asyncio.run``).

The operations are ``DDSClient``'s, unchanged: this module only adapts them.  ``DDSClient``
is handed its reactor and never touches the global one, so here it runs on a Twisted
``AsyncioSelectorReactor`` *instance* built around the running asyncio loop.  That
instance is never installed (``twisted.internet.reactor`` stays unimported, so an
application that later installs a reactor of its own is not refused) and never "run"
(the asyncio loop is already running; the instance only registers file descriptors and
timers on it).  A reactor that was never started does what DDSClient needs: connectTCP
and TLS over it, ``callLater`` and ``seconds``, ``callFromThread`` (asyncio's
``call_soon_threadsafe``).  What it does not do is anything queued "when running":
``callWhenRunning`` never fires, so its thread pool never starts, and with it Twisted's
name resolver, which resolves in that pool.  Host names are therefore resolved with the
loop's own ``getaddrinfo`` (``_LoopResolver``), as asyncio's ``open_connection`` does.

All clients on one loop share one such reactor (``_acquire`` / ``_release``): one timer
and one waker per loop, however many clients a service makes; the last ``close`` removes
it from the loop.

Results cross from Deferreds to asyncio futures in ``_future_of``.  Cancelling the task
that awaits an operation does *not* cancel the operation: a write that was cancelled
half-way (between the 2PC's prepare and commit) would leave locks behind until recovery,
and the caller could not tell whether it was applied anyway.  The operation runs on to
its own outcome or deadline, and the task gets ``asyncio.CancelledError``, which means
what ``dds.errors.Indeterminate`` means: the write may or may not have happened (or may
still happen, up to its timeout); re-read before retrying a non-idempotent write.  The
late outcome of a cancelled write is logged.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Generator, Sequence
from typing import Any, Literal, TypeVar

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (IAddress, IHostResolution, IHostnameResolver,
                                         IResolutionReceiver)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dds.auth import Credentials
from dds.changemsgs import MAX_PAGE
from dds.maps import ClusterMap

from dds.lib.bounded import Bounded
from dds.lib.changes import Change, ChangeCursor, ChangePage
from dds.lib.client import DDSClient, GetResult, TLSPaths
from dds.lib.drjournal import DrJournal
from dds.lib.drreplay import ReplayReport

__all__ = ["AsyncDDSClient"]

T = TypeVar("T")

log = Logger()


# -- the reactor adapter: one per asyncio loop ---------------------------------------------

@implementer(IHostResolution)
@attrs.define
class _Resolution:
    name: str

    def cancel(self) -> None:
        """Nothing to stop: a getaddrinfo already handed to the executor runs out."""


@implementer(IHostnameResolver)
class _LoopResolver:
    """Host names resolved by the asyncio loop (``loop.getaddrinfo``, on the loop's
    default executor).  Twisted's own resolver runs in the reactor's thread pool, which a
    reactor that is never started never starts: a host-name seed would wait forever."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def resolveHostName(self, resolutionReceiver: IResolutionReceiver, hostName: str,
                        portNumber: int = 0,
                        addressTypes: Sequence[type[IAddress]] | None = None,
                        transportSemantics: str = "TCP") -> IHostResolution:
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        types = set(addressTypes or (IPv4Address, IPv6Address))
        family = (socket.AF_INET if types == {IPv4Address}
                  else socket.AF_INET6 if types == {IPv6Address} else socket.AF_UNSPEC)
        semantics: Literal["TCP", "UDP"] = "UDP" if transportSemantics == "UDP" else "TCP"
        kind = socket.SOCK_DGRAM if semantics == "UDP" else socket.SOCK_STREAM
        lookup = asyncio.ensure_future(
            self.loop.getaddrinfo(hostName, portNumber, family=family, type=kind),
            loop=self.loop)

        def done(f: asyncio.Future[list[Any]]) -> None:
            # A failed lookup resolves to no address: the endpoint then reports
            # DNSLookupError, which DDS turns into Unavailable, as with Twisted's resolver.
            if not f.cancelled() and f.exception() is None:
                for fam, _, _, _, sockaddr in f.result():
                    if fam == socket.AF_INET:
                        resolutionReceiver.addressResolved(
                            IPv4Address(semantics, sockaddr[0], sockaddr[1]))
                    elif fam == socket.AF_INET6:
                        resolutionReceiver.addressResolved(
                            IPv6Address(semantics, *sockaddr))
            resolutionReceiver.resolutionComplete()
        lookup.add_done_callback(done)
        return resolution


@attrs.define
class _Shared:
    reactor: AsyncioSelectorReactor
    users: int = 0


_shared: dict[asyncio.AbstractEventLoop, _Shared] = {}


def _acquire(loop: asyncio.AbstractEventLoop) -> AsyncioSelectorReactor:
    """The reactor adapter of ``loop``, made on first use."""
    shared = _shared.get(loop)
    if shared is None:
        reactor = AsyncioSelectorReactor(loop)
        reactor.installNameResolver(_LoopResolver(loop))
        shared = _shared[loop] = _Shared(reactor)
    shared.users += 1
    return shared.reactor


def _release(loop: asyncio.AbstractEventLoop) -> None:
    """One user fewer; the last one takes the adapter off the loop (its waker's file
    descriptors would otherwise outlive the loop, and the loop would never be freed)."""
    shared = _shared.get(loop)
    if shared is None:
        return
    shared.users -= 1
    if shared.users > 0:
        return
    del _shared[loop]
    reactor = shared.reactor
    waker = reactor.waker
    if waker is not None:
        reactor._internalReaders.discard(waker)
        reactor.removeReader(waker)
        waker.connectionLost(None)
        reactor.waker = None


def _future_of(d: Deferred[T], loop: asyncio.AbstractEventLoop,
               late: str | None = None) -> asyncio.Future[T]:
    """A future with ``d``'s outcome.  Cancelling the future leaves ``d`` alone (see the
    module docstring); for a write (``late`` names it) the outcome that arrives after a
    cancellation is logged, the only trace of whether it was applied."""
    future: asyncio.Future[T] = loop.create_future()

    def succeeded(result: T) -> None:
        if not future.done():
            future.set_result(result)
        elif late is not None:
            log.info("a cancelled {op} was applied after all: version {version}",
                     op=late, version=result)

    def failed(failure: Failure) -> None:
        if not future.done():
            error = failure.value
            future.set_exception(error if error is not None else RuntimeError("no error"))
        elif late is not None:
            log.info("a cancelled {op} ended with {error}", op=late,
                     error=type(failure.value).__name__)

    d.addCallbacks(succeeded, failed)
    return future


# -- the client ----------------------------------------------------------------------------

class AsyncDDSClient:
    """``DDSClient``'s operations as coroutines, on the running asyncio loop.

    Make one with ``await AsyncDDSClient.connect(seeds, cluster=…, secret=…)`` or
    ``async with AsyncDDSClient.connect(…) as client:``; it belongs to the loop it was
    made on.  Errors are ``DDSClient``'s (``dds.errors``).  A cancelled write (its task
    cancelled, ``asyncio.wait_for`` or ``asyncio.timeout`` expiring) raises
    ``asyncio.CancelledError`` / ``TimeoutError`` and may or may not have been applied:
    the ``Indeterminate`` case, never the ``dds.errors.Timeout`` one."""

    def __init__(self, client: DDSClient, loop: asyncio.AbstractEventLoop) -> None:
        """Use ``connect``; this wraps a started ``DDSClient`` running on ``loop``'s
        reactor adapter."""
        self.client = client
        self.loop = loop
        self._closed = False

    @classmethod
    def connect(cls, seeds: list[str], *, cluster: str, secret: bytes | str | None = None,
                tls: TLSPaths | None = None, credentials: Credentials | None = None,
                timeout: float = 10.0, **options: Any) -> _Connecting:
        """Fetch the map from ``seeds``, authenticated by exactly one of ``secret`` (the
        cluster's client secret), ``tls`` files or ``credentials``.  ``timeout`` is each
        operation's default deadline; other ``options`` are ``DDSClient``'s.  Await the
        result, or use it with ``async with`` to close the client at the block's end."""
        return _Connecting(cls, seeds, dict(cluster=cluster, secret=secret, tls=tls,
                                            credentials=credentials, timeout=timeout,
                                            **options))

    @property
    def map(self) -> ClusterMap:
        return self.client.map

    def _here(self) -> asyncio.AbstractEventLoop:
        """The client's transports are registered on its own loop: used from another
        (a second ``asyncio.run``, a test's fresh loop) its calls would never complete."""
        if asyncio.get_running_loop() is not self.loop:
            raise RuntimeError("an AsyncDDSClient is used on the event loop it was made on")
        if self._closed:
            raise RuntimeError("this AsyncDDSClient is closed")
        return self.loop

    async def get(self, key: bytes, timeout: float | None = None,
                  consistency: str | Bounded | None = None) -> GetResult:
        """The key's value and version (``value`` None: never written, or removed);
        ``consistency`` as for ``DDSClient.get``."""
        loop = self._here()
        return await _future_of(self.client.get(key, timeout, consistency), loop)

    async def put(self, key: bytes, value: bytes, timeout: float | None = None) -> int:
        """Store ``value``; returns the key's new version."""
        loop = self._here()
        return await _future_of(self.client.put(key, value, timeout), loop, "put")

    async def remove(self, key: bytes, timeout: float | None = None) -> int:
        """Delete the key (a tombstone; its version still grows)."""
        loop = self._here()
        return await _future_of(self.client.remove(key, timeout), loop, "remove")

    async def create(self, key: bytes, value: bytes, timeout: float | None = None) -> int:
        """Store ``value`` only if the key has none; ``Exists`` otherwise."""
        loop = self._here()
        return await _future_of(self.client.create(key, value, timeout), loop, "create")

    async def compare_and_put(self, key: bytes, value: bytes, expected_version: int,
                              timeout: float | None = None) -> int:
        """Store ``value`` only if the key is at ``expected_version`` (0: never
        written); ``VersionMismatch`` otherwise."""
        loop = self._here()
        return await _future_of(
            self.client.compare_and_put(key, value, expected_version, timeout), loop,
            "compare_and_put")

    @property
    def dr_journal(self) -> DrJournal:
        """The DR journal (``DDSClient.dr_journal``): ``len()`` entries, ``.bytes``."""
        return self.client.dr_journal

    async def dr_replay(self) -> ReplayReport:
        """Replay the DR journal at the promoted DR site (``DDSClient.dr_replay``)."""
        loop = self._here()
        return await _future_of(self.client.dr_replay(), loop, "dr_replay")

    def changes(self, partition: str, from_position: str | None = None, *,
                limit: int = MAX_PAGE, timeout: float | None = None) -> AsyncChangeCursor:
        """A cursor over ``partition``'s changes (``DDSClient.changes``): ``await
        cursor.next_page()`` or ``async for change in cursor``."""
        self._here()
        return AsyncChangeCursor(self.client.changes(partition, from_position, limit=limit,
                                                     timeout=timeout), self.loop)

    async def close(self) -> None:
        """Close the connections (idempotent); the loop's last client also takes the
        reactor adapter off the loop."""
        if self._closed:
            return
        if asyncio.get_running_loop() is not self.loop:
            raise RuntimeError("an AsyncDDSClient is closed on the event loop it was made on")
        self._closed = True
        try:
            await _future_of(self.client.close(), self.loop)
        finally:
            _release(self.loop)

    async def __aenter__(self) -> AsyncDDSClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncChangeCursor:
    """``dds.lib.changes.ChangeCursor`` on the asyncio loop; ``position`` is the one to
    checkpoint after a page (each change carries its own too)."""

    def __init__(self, cursor: ChangeCursor, loop: asyncio.AbstractEventLoop) -> None:
        self.cursor = cursor
        self.loop = loop

    @property
    def position(self) -> str:
        return self.cursor.position

    async def next_page(self) -> ChangePage:
        return await _future_of(self.cursor.next_page(), self.loop)

    def __aiter__(self) -> AsyncChangeCursor:
        return self

    async def __anext__(self) -> Change:
        return await _future_of(Deferred.fromCoroutine(self.cursor.__anext__()), self.loop)


class _Connecting:
    """What ``AsyncDDSClient.connect`` returns: awaitable (the client) and an async
    context manager (the client, closed at the block's end), so both spellings work
    without a second method name."""

    def __init__(self, cls: type[AsyncDDSClient], seeds: list[str],
                 options: dict[str, Any]) -> None:
        self._cls = cls
        self._seeds = seeds
        self._options = options
        self._client: AsyncDDSClient | None = None

    def __await__(self) -> Generator[Any, None, AsyncDDSClient]:
        return self._connect().__await__()

    async def __aenter__(self) -> AsyncDDSClient:
        self._client = await self._connect()
        return self._client

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.close()

    async def _connect(self) -> AsyncDDSClient:
        loop = asyncio.get_running_loop()
        reactor = _acquire(loop)
        try:
            client = DDSClient(reactor, self._seeds, **self._options)
        except BaseException:
            _release(loop)
            raise
        # Fetching the map only reads: a cancelled connect may stop it where it is.
        starting = Deferred.fromCoroutine(client.start())
        try:
            await _future_of(starting, loop)
        except BaseException:
            starting.cancel()
            try:
                await _future_of(client.close(), loop)
            finally:
                _release(loop)
            raise
        return self._cls(client, loop)
