"""The brick daemon's reactor: Twisted's epoll reactor without the logging context it
builds around every socket event.

For each ready socket, Twisted's ``EPollReactor.doPoll`` calls ``log.callWithLogger``,
which asks the connection for its log prefix and runs the event inside a new
``twisted.python.context`` frame: five Python calls and a dict per event, so that a
legacy ``twisted.python.log`` message logged while handling it carries the connection's
name as its ``system``.  The brick logs through ``twisted.logger`` with its own fields
and never reads that context, and a brick handles only a few requests per event (a
client's requests are spread over six bricks), so those calls were a measurable part of
its time per request (``docs/performance.md``: with one bench client, gets went from 0.341-0.345
to 0.375-0.393 of the floor).

What the lean loop keeps from Twisted: the event dispatch itself
(``_doReadOrWrite``, which already catches and logs an exception of ``doRead`` or
``doWrite`` and disconnects that connection); and an exception escaping it (from a
protocol's ``connectionLost``) is logged and ends only that event, never the loop
(``KeyboardInterrupt`` excepted, as in Twisted).  What
it drops: the legacy ``system`` of such messages is ``-`` instead of the connection's
name.

Only ``dds-brick`` installs it (``install``); the library runs on whatever reactor its
service chose, and the twistd plugin face keeps twistd's choice.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.logger import Logger

log = Logger()

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # no epoll on this platform: Twisted's default reactor stays
    EPollReactor = None  # type: ignore[assignment,misc]


if EPollReactor is not None:

    class LeanEPollReactor(EPollReactor):
        """``EPollReactor`` whose events run without ``log.callWithLogger``."""

        def doPoll(self, timeout: float | None) -> None:
            if timeout is None:
                timeout = -1
            try:
                events = self._poller.poll(timeout, len(self._selectables))
            except OSError as err:
                if err.errno == errno.EINTR:
                    return
                raise
            selectables = self._selectables
            handle = self._doReadOrWrite
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is None:
                    continue
                try:
                    handle(selectable, fd, event)
                except KeyboardInterrupt:
                    raise
                except BaseException:  # noqa: BLE001 -- as callWithLogger did: log it
                    log.failure("unhandled error handling an event of {selectable}",
                                selectable=selectable)

        doIteration = doPoll


def install() -> None:
    """Install the lean reactor as the global one, unless epoll is missing or a reactor
    is installed already (the caller names the one in use)."""
    import sys

    if "twisted.internet.reactor" not in sys.modules and EPollReactor is not None:
        from twisted.internet.main import installReactor
        installReactor(LeanEPollReactor())


def make() -> Any:
    """A new, uninstalled lean reactor (for tests)."""
    if EPollReactor is None:
        raise RuntimeError("epoll is not available on this platform")
    return LeanEPollReactor()


__all__ = ["install", "make"]
