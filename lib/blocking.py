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

import time
from collections.abc import Iterator
from typing import Any, Callable

import crochet
from twisted.internet.defer import Deferred

from dds.errors import Indeterminate, Timeout

from dds.changemsgs import MAX_PAGE
from dds.lib.bounded import Bounded
from dds.lib.changes import Change, ChangeCursor, ChangePage
from dds.lib.client import DDSClient, GetResult
from dds.lib.drjournal import DrJournal
from dds.lib.drreplay import ReplayReport

#: How long a thread waits beyond the operation's own timeout.  ``DDSClient`` answers
#: every call itself, shortly after its deadline: a write that may have been applied as
#: ``Indeterminate``, ``Timeout`` only when nothing was.  Its deadline bounds each request,
#: but not every step around them: opening a connection (``dds.connect``: up to 5 s for
#: TCP and the handshake) and fetching the map (5 s per brick asked) may run past it.
#: The wait outlasts those, so that what the caller gets is the async client's answer,
#: not a guess made by a thread that stopped waiting in the middle of a 2PC.
_GRACE_S = 30.0


@crochet.run_in_reactor
def _in_reactor(fn: Callable[..., Deferred[Any]], *args: Any, **kw: Any) -> Deferred[Any]:
    return fn(*args, **kw)


class BlockingDDSClient:
    """Same operations as ``DDSClient``, with the same per-call ``timeout`` (seconds; the
    client's ``timeout`` when None); each blocks the calling thread until done.  Safe to
    share between threads."""

    def __init__(self, seeds: list[str], *, cluster: str, timeout: float = 10.0,
                 **options: Any) -> None:
        crochet.setup()
        from twisted.internet import reactor as global_reactor  # see the module docstring

        self.timeout = timeout
        self._client: DDSClient = self._wait(
            self.timeout, False, DDSClient.connect, global_reactor, seeds,
            cluster=cluster, timeout=timeout, **options)

    def _wait(self, limit: float, write: bool, fn: Callable[..., Deferred[Any]], /,
              *args: Any, **kw: Any) -> Any:
        """Run ``fn`` in the reactor and wait for its own answer.  Should even the grace
        run out, a read is cancelled (``Timeout``: nothing changed), but a write is left
        to finish: cancelling it could stop a 2PC between its COMMITs, and whether it
        applied is unknown, so it is ``Indeterminate``."""
        result = _in_reactor(fn, *args, **kw)
        try:
            return result.wait(limit + _GRACE_S)
        except crochet.TimeoutError:
            waited = f"{limit + _GRACE_S:g}s"
            if write:
                raise Indeterminate(f"no answer within {waited}: the write may or may "
                                    "not have happened; re-read before retrying") from None
            result.cancel()
            raise Timeout(f"no answer within {waited}") from None

    def _limit(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    def get(self, key: bytes, timeout: float | None = None,
            consistency: str | Bounded | None = None) -> GetResult:
        limit = self._limit(timeout)
        return self._wait(limit, False, self._client.get, key, timeout=limit,
                          consistency=consistency)

    def put(self, key: bytes, value: bytes, timeout: float | None = None) -> int:
        limit = self._limit(timeout)
        return self._wait(limit, True, self._client.put, key, value, timeout=limit)

    def remove(self, key: bytes, timeout: float | None = None) -> int:
        limit = self._limit(timeout)
        return self._wait(limit, True, self._client.remove, key, timeout=limit)

    def create(self, key: bytes, value: bytes, timeout: float | None = None) -> int:
        limit = self._limit(timeout)
        return self._wait(limit, True, self._client.create, key, value, timeout=limit)

    def compare_and_put(self, key: bytes, value: bytes, expected_version: int,
                        timeout: float | None = None) -> int:
        limit = self._limit(timeout)
        return self._wait(limit, True, self._client.compare_and_put, key, value,
                          expected_version, timeout=limit)

    @property
    def dr_journal(self) -> DrJournal:
        """The DR journal (``DDSClient.dr_journal``): ``len()`` entries, ``.bytes``."""
        return self._client.dr_journal

    def dr_replay(self, timeout: float | None = None) -> ReplayReport:
        """Replay the DR journal at the promoted DR site (``DDSClient.dr_replay``); each
        replay has the client's timeout, ``timeout`` bounds the wait for the whole."""
        limit = self._limit(timeout)
        report: ReplayReport = self._wait(limit, True, self._client.dr_replay)
        return report

    def changes(self, partition: str, from_position: str | None = None, *,
                limit: int = MAX_PAGE, timeout: float | None = None,
                poll_s: float = 0.5) -> BlockingChangeCursor:
        """A cursor over ``partition``'s changes (``DDSClient.changes``):
        ``cursor.next_page()``, or ``for change in cursor`` (follows for ever)."""
        limit_s = self._limit(timeout)
        cursor = self._client.changes(partition, from_position, limit=limit,
                                      timeout=limit_s)
        return BlockingChangeCursor(self, cursor, limit_s, poll_s)

    def close(self) -> None:
        self._wait(self.timeout, False, self._client.close)

    def __enter__(self) -> "BlockingDDSClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlockingChangeCursor:
    """``dds.lib.changes.ChangeCursor`` for a thread: each page blocks the caller; at the
    end of the stream, iteration waits ``poll_s`` (in the caller's thread) and asks
    again, and it stops once the partition has ended (``cursor.ended``: successors)."""

    def __init__(self, owner: BlockingDDSClient, cursor: ChangeCursor, limit_s: float,
                 poll_s: float) -> None:
        self._owner = owner
        self.cursor = cursor
        self._limit_s = limit_s
        self.poll_s = poll_s

    @property
    def position(self) -> str:
        return self.cursor.position

    def next_page(self) -> ChangePage:
        page: ChangePage = self._owner._wait(self._limit_s, False, self.cursor.next_page)
        return page

    def __iter__(self) -> Iterator[Change]:
        while True:
            page = self.next_page()
            yield from page.changes
            if page.ended:
                return
            if not page.changes:
                time.sleep(self.poll_s)
