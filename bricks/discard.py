"""Deleting large files without stalling the disk.

On a file system mounted with ``discard`` (this machine's is), unlinking a 100 MB file
frees its blocks in one go, and every writer on the disk waits meanwhile, neighbouring
bricks included: replaced replicas, snapshots and dropped partitions are freed a few MB
at a time instead, and one file at a time per reactor (per brick process), at most
``DISCARD_STEP / DISCARD_INTERVAL_S`` (40 MB/s): a move frees its snapshot and the
source's replica after the cut-over, while the new replicas take the writes on the same
disk, and several files freed at full speed at once stalled their fsyncs for 100-200 ms.
A file queued is renamed by its caller first, so it is gone for everyone else at once;
only its blocks wait.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger()

#: Bytes freed per step, and the pause between steps.
DISCARD_STEP = 1 << 20
DISCARD_INTERVAL_S = 0.025


class _Queue:
    """The files a reactor frees, one after the other."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
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
                    os.truncate(path, size - step)
                    self.clock.callLater(interval, self._one)
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


_QUEUES: dict[int, _Queue] = {}


def discard_gradually(path: Path, clock: IReactorTime, step: int = DISCARD_STEP,
                      interval: float = DISCARD_INTERVAL_S) -> Deferred[None]:
    """Delete ``path`` ``step`` bytes every ``interval``, after the files queued before
    it on the same clock (see the module's docstring).  Fires once it is gone."""
    queue = _QUEUES.get(id(clock))
    if queue is None or queue.clock is not clock:
        queue = _QUEUES[id(clock)] = _Queue(clock)
    return queue.add(path, step, interval)
