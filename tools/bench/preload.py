"""The benches' keys, and partition files written directly before any brick starts:
``bench recovery`` and ``bench move`` preload a large partition this way (loading it
through the library would take minutes), and so do the tests that need one."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from dds.partition import PartitionId

__all__ = ["ProgressHolder", "key_of", "partition_key", "preload_partition"]


def key_of(i: int) -> bytes:
    """The ``i``-th key of every bench."""
    return b"bench-%010d" % i


def partition_key(i: int, pid: PartitionId) -> bytes:
    """The ``i``-th key of the bench that routes to ``pid``: :func:`key_of`, or
    ``bench-<i>.<n>`` with the smallest ``n`` that routes to ``pid`` (``2 ** depth``
    hashes on average)."""
    key = key_of(i)
    n = 0
    while not pid.owns(key):
        key = b"bench-%010d.%d" % (i, n)
        n += 1
    return key


class ProgressHolder(Protocol):
    """Where the live progress display is kept while it runs (a bench's run, so that
    its clean-up stops the display whatever happens)."""
    progress: Any


def preload_partition(path: Path, pid: str, keys: int, value_bytes: int,
                      holder: ProgressHolder | None = None,
                      key: Callable[[int], bytes] | None = None) -> int:
    """Write ``keys`` rows (the ``i``-th key ``key(i)``, :func:`key_of` by default;
    random values of ``value_bytes``, version 1, lsn 1..N) into a new partition file of
    ``pid``, in the schema the bricks create; return its size."""
    key = key or key_of
    from dds.bricks.partstore import PartitionStore
    from dds.tools import ui

    owner = PartitionId.parse(pid)
    if owner.depth != 0 and not all(owner.owns(key(i)) for i in range(keys)):
        raise ValueError(f"the preloaded keys do not all belong to {pid}")
    PartitionStore(path, pid, "disk").close()       # the schema, exactly as bricks make it
    rng = random.Random(0x5EED)
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        batch = 20000
        with ui.progress() as bar:
            if holder is not None:
                holder.progress = bar
            task = bar.add_task("preload (rows)", total=keys)
            for start in range(0, keys, batch):
                stop = min(keys, start + batch)
                conn.executemany(
                    "INSERT INTO kv (key, value, version, lsn) VALUES (?, ?, 1, ?)",
                    ((key(i), rng.randbytes(value_bytes), i + 1)
                     for i in range(start, stop)))
                bar.update(task, completed=stop)
            if holder is not None:
                holder.progress = None
        conn.execute("UPDATE meta SET value = ? WHERE name = 'last_lsn'", (keys,))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return path.stat().st_size
