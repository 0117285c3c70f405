"""The asyncio face's reactor adapter (``dds.lib.aio``) on a plain asyncio loop: what a
never-started ``AsyncioSelectorReactor`` instance must do for ``DDSClient``, and what
``_future_of`` must not do (cancel an operation whose awaiting task was cancelled).

Each test runs its own ``asyncio.run``; the test process's Twisted reactor (pytest-twisted)
is not involved."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IHostResolution

from dds.lib import aio


def test_clients_on_one_loop_share_one_reactor_adapter() -> None:
    async def main() -> tuple[Any, Any, int]:
        loop = asyncio.get_running_loop()
        first, second = aio._acquire(loop), aio._acquire(loop)
        users = aio._shared[loop].users
        aio._release(loop)
        aio._release(loop)
        return first, second, users
    first, second, users = asyncio.run(main())
    assert first is second and users == 2


def test_each_loop_gets_its_own_reactor_adapter() -> None:
    async def main() -> Any:
        loop = asyncio.get_running_loop()
        reactor = aio._acquire(loop)
        aio._release(loop)
        return reactor
    assert asyncio.run(main()) is not asyncio.run(main())


def test_call_later_on_the_adapter_fires_on_the_running_asyncio_loop() -> None:
    async def main() -> str:
        loop = asyncio.get_running_loop()
        reactor = aio._acquire(loop)
        try:
            d: Deferred[str] = Deferred()
            reactor.callLater(0.01, d.callback, "fired")
            return await asyncio.wait_for(aio._future_of(d, loop), 5)
        finally:
            aio._release(loop)
    assert asyncio.run(main()) == "fired"


def test_the_last_release_takes_the_adapter_and_its_waker_off_the_loop() -> None:
    async def main() -> tuple[bool, bool, bool]:
        loop = asyncio.get_running_loop()
        reactor = aio._acquire(loop)
        fd = reactor.waker.fileno()
        registered = loop._selector.get_map().get(fd) is not None  # type: ignore[attr-defined]
        aio._release(loop)
        still = loop._selector.get_map().get(fd) is not None  # type: ignore[attr-defined]
        return registered, still, loop in aio._shared
    registered, still, kept = asyncio.run(main())
    assert registered and not still and not kept


class _Receiver:
    def __init__(self) -> None:
        self.addresses: list[IAddress] = []
        self.done = asyncio.get_running_loop().create_future()

    def resolutionBegan(self, resolution: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        self.addresses.append(address)

    def resolutionComplete(self) -> None:
        self.done.set_result(None)


def test_host_names_are_resolved_by_the_loop_not_by_a_reactor_thread_pool() -> None:
    """Twisted's resolver needs the reactor's thread pool, which a reactor that is never
    started never starts: with it, a host-name seed would hang."""
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        reactor = aio._acquire(loop)
        try:
            receiver = _Receiver()
            reactor.nameResolver.resolveHostName(receiver, "localhost", 7401)
            await asyncio.wait_for(receiver.done, 10)
            return [f"{a.host}:{a.port}" for a in receiver.addresses]  # type: ignore[attr-defined]
        finally:
            aio._release(loop)
    assert "127.0.0.1:7401" in asyncio.run(main())


def test_an_unknown_host_name_resolves_to_no_address() -> None:
    async def main() -> list[IAddress]:
        loop = asyncio.get_running_loop()
        reactor = aio._acquire(loop)
        try:
            receiver = _Receiver()
            reactor.nameResolver.resolveHostName(receiver, "no-such-host.invalid", 1)
            await asyncio.wait_for(receiver.done, 30)
            return receiver.addresses
        finally:
            aio._release(loop)
    assert asyncio.run(main()) == []


def test_cancelling_the_awaiting_task_leaves_the_operation_running() -> None:
    """A write cancelled between its prepare and its commit would leave locks behind and
    an outcome nobody can know: the Deferred is never cancelled from asyncio."""
    d: Deferred[int] = Deferred()
    cancelled: list[bool] = []
    d.addErrback(lambda f: cancelled.append(True))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(aio._future_of(d, loop, "put"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    asyncio.run(main())
    assert not cancelled and not d.called
    d.callback(3)       # the late outcome goes to the log, not to an error


def test_an_operation_error_reaches_the_awaiting_task_as_the_same_exception() -> None:
    from dds.errors import VersionMismatch

    async def main() -> None:
        loop = asyncio.get_running_loop()
        d: Deferred[int] = Deferred()
        loop.call_soon(d.errback, VersionMismatch("at version 2"))
        await aio._future_of(d, loop)
    with pytest.raises(VersionMismatch, match="at version 2"):
        asyncio.run(main())

