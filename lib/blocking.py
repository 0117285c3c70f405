"""``BlockingDDSClient``: DDS for code that does not run a reactor (threads, WSGI, scripts).

Built on crochet, which runs Twisted's reactor in a daemon thread, hands calls to it from
any thread and waits for their results with a timeout.  We chose it over a hand-made
reactor thread because it already gets the hard parts right: starting the reactor once
per process, stopping it at interpreter exit, and thread-safe result hand-off with
cancellation.  The one cost is that it owns the process's global reactor: a process that
already runs a reactor should use ``DDSClient`` directly.

This module is the single place in ``dds.lib`` that touches the global reactor, because
running it in a thread is this module's whole purpose; ``DDSClient`` itself is always
handed its reactor.
"""

from __future__ import annotations

from typing import Any, Callable

import crochet
from twisted.internet.defer import Deferred

from dds.errors import Timeout

from dds.lib.client import DDSClient, GetResult

#: Extra seconds a thread waits beyond the operation's own deadline, so that the
#: operation's precise error (``Indeterminate``, ``Locked`` …) wins over a bare timeout.
_GRACE_S = 2.0


@crochet.run_in_reactor
def _in_reactor(fn: Callable[..., Deferred[Any]], *args: Any, **kw: Any) -> Deferred[Any]:
    return fn(*args, **kw)


class BlockingDDSClient:
    """Same operations as ``DDSClient``; each blocks the calling thread until done.
    Safe to share between threads."""

    def __init__(self, seeds: list[str], *, cluster: str, timeout: float = 10.0,
                 **options: Any) -> None:
        crochet.setup()
        from twisted.internet import reactor as global_reactor  # see the module docstring

        self.timeout = timeout
        self._client: DDSClient = self._wait(
            DDSClient.connect, global_reactor, seeds, cluster=cluster,
            timeout=timeout, **options)

    def _wait(self, fn: Callable[..., Deferred[Any]], *args: Any, **kw: Any) -> Any:
        result = _in_reactor(fn, *args, **kw)
        try:
            return result.wait(self.timeout + _GRACE_S)
        except crochet.TimeoutError:
            result.cancel()
            raise Timeout(f"no answer within {self.timeout + _GRACE_S:g}s") from None

    def get(self, key: bytes) -> GetResult:
        return self._wait(self._client.get, key)

    def put(self, key: bytes, value: bytes) -> int:
        return self._wait(self._client.put, key, value)

    def remove(self, key: bytes) -> int:
        return self._wait(self._client.remove, key)

    def create(self, key: bytes, value: bytes) -> int:
        return self._wait(self._client.create, key, value)

    def compare_and_put(self, key: bytes, value: bytes, expected_version: int) -> int:
        return self._wait(
            self._client.compare_and_put, key, value, expected_version)

    def close(self) -> None:
        self._wait(self._client.close)

    def __enter__(self) -> "BlockingDDSClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
