"""Deleting large files without stalling the disk.

On a file system mounted with ``discard`` (this machine's is), unlinking a 100 MB file
frees its blocks in one go, and every writer on the disk waits meanwhile, neighbouring
bricks included: replaced replicas, snapshots and dropped partitions are freed a few MB
at a time instead, and one file at a time per reactor (per brick process), at most
``DISCARD_STEP / DISCARD_INTERVAL_S`` (40 MB/s): a move frees its snapshot and the
source's replica after the cut-over, while the new replicas take the writes on the same
disk, and several files freed at full speed at once stalled their fsyncs for 100-200 ms.
A file queued is renamed by its caller first, so it is gone for everyone else at once;
only its blocks wait.  Given a thread runner, each step's ``truncate`` runs in a worker
thread: one 1 MB step still took 30-100 ms on a busy disk, and on the reactor thread
every request of the brick waited for it.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger()

#: Runs a blocking call in a worker thread: ``run(f, *args)`` -> Deferred of its result.
RunInThread = Callable[..., Deferred[Any]]

#: Bytes freed per step, and the pause between steps.
DISCARD_STEP = 1 << 20
DISCARD_INTERVAL_S = 0.025


class _Queue:
    """The files a reactor frees, one after the other."""

    def __init__(self, clock: IReactorTime, run_in_thread: RunInThread | None) -> None:
        self.clock = clock
        self.run_in_thread = run_in_thread
        self.files: deque[tuple[Path, int, float, Deferred[None]]] = deque()
        self.running = False

    def add(self, path: Path, step: int, interval: float) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        self.files.append((path, step, interval, done))
        if not self.running:
            self.running = True
            self._one()
        return done

    def _one(self) -> None:
        while self.files:
            path, step, interval, done = self.files[0]
            try:
                size = path.stat().st_size
                if size > step:
                    if self.run_in_thread is None:
                        os.truncate(path, size - step)
                        self.clock.callLater(interval, self._one)
                    else:
                        d = self.run_in_thread(os.truncate, path, size - step)
                        d.addCallbacks(self._stepped, self._failed, (interval,),
                                       errbackArgs=(path, interval))
                    return
                path.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.error("cannot delete {path}: {error}", path=str(path),
                          error=e.strerror or str(e))
            self.files.popleft()
            done.callback(None)
        self.running = False
        _QUEUES.pop(id(self.clock), None)

    def _stepped(self, _: object, interval: float) -> None:
        self.clock.callLater(interval, self._one)

    def _failed(self, failure: Any, path: Path, interval: float) -> None:
        """A step failed: delete the file in one go instead, and go on with the next."""
        log.error("cannot shorten {path}: {error}", path=str(path),
                  error=failure.getErrorMessage())
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            log.error("cannot delete {path}: {error}", path=str(path),
                      error=e.strerror or str(e))
        _, _, _, done = self.files.popleft()
        done.callback(None)
        self.clock.callLater(interval, self._one)


_QUEUES: dict[int, _Queue] = {}


def discard_gradually(path: Path, clock: IReactorTime, step: int = DISCARD_STEP,
                      interval: float = DISCARD_INTERVAL_S,
                      run_in_thread: RunInThread | None = None) -> Deferred[None]:
    """Delete ``path`` ``step`` bytes every ``interval``, after the files queued before
    it on the same clock (see the module's docstring).  Fires once it is gone.
    ``run_in_thread``: where the steps run (the first caller's choice holds for the
    queue; None: on the reactor thread)."""
    queue = _QUEUES.get(id(clock))
    if queue is None or queue.clock is not clock:
        queue = _QUEUES[id(clock)] = _Queue(clock, run_in_thread)
    elif queue.run_in_thread is None:
        queue.run_in_thread = run_in_thread
    return queue.add(path, step, interval)
