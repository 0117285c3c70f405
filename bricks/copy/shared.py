"""Snapshots shared by the copy sessions of one partition (DESIGN §8's moves).

A move copies a partition to every member of the target RG at once, one session per
target: sessions of the same partition begun within ``SHARE_S`` of each other share one
snapshot file (the first one's, or the one still being taken), so the source backs up
and hashes the file once, not once per target, and frees one file afterwards.  The file
is deleted when the last session using it ends.  Each session's delta starts at the
snapshot's log position, so sharing changes nothing for a target.  Sessions that fence
writes for the whole copy (taken under their own fence) never share.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from dds.errors import InternalError, NotServing
from dds.metrics import Metrics
from dds.partition import PartitionId

from dds.bricks.discard import discard_gradually
from dds.bricks.copy.session import CopySession
from dds.bricks.context import RunInThread
from dds.bricks.copy.snapshot import SnapshotInfo, take_snapshot
from dds.bricks.storage import Storage

#: A snapshot this recent is shared by a new session of the same partition.
SHARE_S = 30.0


class SharedSnapshot:
    """One snapshot file and the sessions using it (``refs``); ``waiters`` are sessions
    that wait for it to be taken."""

    __slots__ = ("pid", "file", "info", "taken_at", "refs", "waiters", "taking")

    def __init__(self, pid: str, file: tuple[int, int] | None) -> None:
        self.pid = pid
        #: (device, inode) of the replica it was taken of: a replica replaced since
        #: (recovery, a split) numbers its log anew, and the snapshot's lsn would lie.
        self.file = file
        self.info: SnapshotInfo | None = None
        self.taken_at = 0.0
        self.refs: set[int] = set()
        self.waiters: list[Deferred[SnapshotInfo]] = []
        self.taking = True


class SharedSnapshots:
    """Per partition, the snapshot a new session may share; each session holds a
    reference on the snapshots it uses until it ends (``release``)."""

    def __init__(self, brick_id: str, storage: Storage, clock: IReactorTime,
                 snapshot_dir: Path, metrics: Metrics) -> None:
        self.brick_id = brick_id
        self.storage = storage
        self.clock = clock
        self.snapshot_dir = snapshot_dir
        self.metrics = metrics
        self._shared: dict[str, SharedSnapshot] = {}

    async def take(self, s: CopySession, pid: PartitionId, run: RunInThread,
                   discard_run: RunInThread) -> SnapshotInfo:
        """A snapshot of ``pid`` for ``s``: a recent one another session uses, or a new
        one taken by ``run``.  ``s`` holds a reference on it until it ends."""
        key = str(pid)
        now = self.clock.seconds()
        file = self._file_id(key)
        sh = None if s.fence_whole_copy else self._shared.get(key)
        if sh is not None and sh.file == file and file is not None and (
                sh.taking or now - sh.taken_at <= SHARE_S):
            sh.refs.add(s.id)
            s.shared.append(sh)
            self.metrics.inc("copy_snapshots_shared_total")
            if sh.info is not None:
                return sh.info
            d: Deferred[SnapshotInfo] = Deferred()
            sh.waiters.append(d)
            return await d
        sh = SharedSnapshot(key, file)
        sh.refs.add(s.id)
        s.shared.append(sh)
        if not s.fence_whole_copy:
            self._shared[key] = sh
        dest = self.snapshot_dir / f"copy-{s.id:016x}-{pid}.snapshot"
        try:
            info = await take_snapshot(self.storage, key, dest, run)
        except BaseException as e:
            sh.taking = False
            if self._shared.get(key) is sh:
                del self._shared[key]
            if isinstance(e, KeyError):
                err: BaseException = NotServing(f"brick {self.brick_id} holds no replica "
                                                f"of {pid}")
            elif isinstance(e, (OSError, sqlite3.Error, ValueError)):
                err = InternalError(f"snapshot of {pid} failed: {e}")
            else:
                err = e
            waiters, sh.waiters = sh.waiters, []
            for w in waiters:
                w.errback(err)
            if err is e:
                raise
            raise err from e
        sh.info, sh.taken_at, sh.taking = info, self.clock.seconds(), False
        if not sh.refs:           # every session using it ended meanwhile
            self._free(sh, discard_run)
        waiters, sh.waiters = sh.waiters, []
        for w in waiters:
            w.callback(info)
        return info

    def _file_id(self, pid: str) -> tuple[int, int] | None:
        try:
            st = os.stat(self.storage.partition_path(pid))
        except (OSError, ValueError):
            return None
        return st.st_dev, st.st_ino

    def release(self, s: CopySession, discard_run: RunInThread) -> None:
        """``s`` no longer uses its snapshots: free those nobody else uses."""
        for sh in s.shared:
            sh.refs.discard(s.id)
            if not sh.refs:
                if self._shared.get(sh.pid) is sh:
                    del self._shared[sh.pid]
                if not sh.taking:
                    self._free(sh, discard_run)
        s.shared = []

    def _free(self, sh: SharedSnapshot, discard_run: RunInThread) -> None:
        if self._shared.get(sh.pid) is sh:
            del self._shared[sh.pid]
        if sh.info is not None:
            # Freeing 100 MB at once stalls the disk for a few hundred ms: a write pause.
            discard_gradually(sh.info.path, self.clock, run_in_thread=discard_run)


__all__ = ["SHARE_S", "SharedSnapshot", "SharedSnapshots"]
