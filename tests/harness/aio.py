"""Helpers for tests that run on the reactor (pytest-twisted) against real bricks."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue

from dds.errors import StaleMap
from dds.lib import DDSClient

from tests.harness import admin, processes
from tests.harness.cluster import Cluster
from tests.harness.processes import BrickProcess
from tests.harness.zygote import zygote


async def eventually(condition: Callable[[], Awaitable[bool]], timeout: float,
                     what: str) -> None:
    """Poll an async ``condition`` without blocking the reactor, up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        await deferLater(reactor, 0.05, lambda: None)


class Background:
    """A loop a test runs beside its own steps (reads or writes until ``stop``), as a
    ``Deferred`` in ``done``.  Every one still running when its test ends, also when the
    test failed before stopping it, is told to stop by :func:`stop_background` (the
    integration conftest's autouse fixture): a forgotten loop would go on into later
    tests against stopped bricks.  ``settle`` is what a loop awaits after a failed
    operation: an operation that fails at once (a closed connection answers without
    waiting) must still let the reactor run, or the loop spins, never sees ``stop``, and
    piles up error records without bound (9-14 GB in one failing run)."""

    def __init__(self) -> None:
        self._stop = False
        _running.append(self)

    def stop_soon(self) -> None:
        self._stop = True

    @staticmethod
    async def settle() -> None:
        await deferLater(reactor, 0, lambda: None)


#: Background loops (anything with ``stop_soon``) started by the running test.
_running: list[Any] = []


def register_background(loop: Any) -> None:
    """Have ``loop.stop_soon()`` called when the test ends (``Writers`` uses it)."""
    _running.append(loop)


def stop_background() -> None:
    """Tell every background loop started so far to stop."""
    for loop in _running:
        loop.stop_soon()
    _running.clear()


async def call(cluster: Cluster, brick: BrickProcess, mtype: str, body: dict[str, Any]
               ) -> Any:
    """One admin request to one brick, on a connection of its own."""
    conn = await cluster.admin_connection(reactor, brick)
    try:
        return await conn.call(mtype, body, timeout=10)
    finally:
        conn.close()


async def replica_value(cluster: Cluster, client: DDSClient, brick: BrickProcess,
                        key: bytes) -> tuple[bytes | None, int]:
    """The key as one replica answers it (bypassing the client's replica choice)."""
    route = client.router.route(client.map, key)
    reply = await call(cluster, brick, "get", {"key": key, **route.ref()})
    return (reply["value"], reply["version"])


async def every_replica_holds(cluster: Cluster, client: DDSClient,
                              written: dict[bytes, bytes]) -> None:
    """Every acknowledged write, read from every replica of its key.  (A map fetched from
    a brick that has not yet heard of the last record change is stale: refetched.)"""
    for key, value in written.items():
        for _attempt in range(100):
            route = client.router.route(client.map, key)
            try:
                got = [(rec.id, await replica_value(cluster, client, cluster.brick(rec.id),
                                                    key)) for rec in route.replicas]
                break
            except StaleMap:
                await client.maps.refresh()
                await deferLater(reactor, 0.05, lambda: None)
        else:
            raise AssertionError(f"the map of {key!r} stays stale")
        assert all(g[0] == value for _, g in got), (key, got)


async def run_forked(argv: list[str], env: dict[str, str],
                     timeout: float = admin.COMMAND_TIMEOUT_S
                     ) -> subprocess.CompletedProcess[str]:
    """``argv`` (a ``dds-admin`` command, or a ``python -c`` program) run to its end
    without blocking the reactor (the test's writers and clients go on meanwhile), its
    output captured: forked from the zygote when it can be (``tests/harness/zygote.py``),
    else exec'd.  A forked one is killed, and ``TimeoutExpired`` raised, after
    ``timeout``."""
    if not zygote().usable(env):
        out, err, code = await getProcessOutputAndValue(argv[0], argv[1:], env=env)
        return subprocess.CompletedProcess(argv, code, out.decode(errors="replace"),
                                           err.decode(errors="replace"))
    command = zygote().command(argv, env)
    deadline = time.monotonic() + timeout
    while command.child.poll() is None:
        if time.monotonic() > deadline:
            command.kill()
            killed = command.result()
            raise subprocess.TimeoutExpired(argv, timeout, killed.stdout, killed.stderr)
        await deferLater(reactor, 0.02, lambda: None)
    return command.result()


async def run_admin(argv: list[str], env: dict[str, str],
                    timeout: float = admin.COMMAND_TIMEOUT_S
                    ) -> subprocess.CompletedProcess[str]:
    """``tests.harness.admin.run_admin`` without blocking the reactor (``run_forked``),
    counted."""
    began = time.monotonic()
    try:
        return await run_forked(argv, env, timeout)
    finally:
        admin.count(time.monotonic() - began)


async def stop(*bricks: BrickProcess, sig: int = signal.SIGTERM,
               timeout: float = 20.0) -> list[int]:
    """Signal ``bricks`` together and wait for their exits without blocking the reactor;
    their exit codes.  A client of this process goes on meanwhile, as a service's would
    while an operator stops a brick: it sends the COMMITs it had queued, and the bricks
    need not wait out their shutdown grace (5 s) for a transaction this process had
    decided, as they do while ``BrickProcess.stop`` blocks it."""
    began = time.monotonic()
    try:
        for b in bricks:
            if b.alive():
                b.send_signal(sig)

        async def exited() -> bool:
            return not any(b.alive() for b in bricks)
        await eventually(exited, timeout, f"{[b.id for b in bricks]} to exit")
    finally:
        processes.stop_seconds += time.monotonic() - began
    return [b.stop() for b in bricks]        # reaped already: their codes
