"""Deleting large files without stalling the disk.

On a file system mounted with ``discard`` (this machine's is), unlinking a 100 MB file
frees its blocks in one go, and every writer on the disk waits meanwhile, neighbouring
bricks included: replaced replicas, snapshots and dropped partitions are freed a few MB
at a time instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger()

#: Bytes freed per step, and the pause between steps.
DISCARD_STEP = 8 << 20
DISCARD_INTERVAL_S = 0.02


def discard_gradually(path: Path, clock: IReactorTime, step: int = DISCARD_STEP,
                      interval: float = DISCARD_INTERVAL_S) -> Deferred[None]:
    """Delete ``path`` a few MB at a time (see the module's docstring)."""
    done: Deferred[None] = Deferred()

    def one() -> None:
        try:
            size = path.stat().st_size
            if size > step:
                os.truncate(path, size - step)
                clock.callLater(interval, one)
                return
            path.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.error("cannot delete {path}: {error}", path=str(path),
                      error=e.strerror or str(e))
        done.callback(None)
    one()
    return done
