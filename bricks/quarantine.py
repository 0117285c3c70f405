"""Replicas no record lists any more, kept for a grace period instead of deleted (issue 13).

A brick used to delete a replica as soon as no RG record of its own listed the partition.
One forged record then deleted every copy of three partitions on every brick.  Now such a
replica moves to ``data_dir/quarantine/<pid>.<unix ms>.sqlite``, is shown in ``status``,
can be put back by ``restore_quarantined`` (``dds-admin repair``), and is deleted by a
periodic sweep once it is older than ``brick.quarantine_hours``.

Replicas whose end a finished reorganization of this brick accounts for (the source side
of a move, the sources of a split or a merge, a member removed from its RG) are still
dropped at once by the caller: they are expected, and can be large.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from dds.errors import InvalidRequest, Refused
from dds.maps import ClusterMap
from dds.metrics import Metrics
from dds.partition import MAX_DEPTH, PartitionId

from dds.bricks.discard import discard_gradually
from dds.bricks.needscopy import QUARANTINE_DIR
from dds.bricks.storage import Storage

#: ``<pid>.<unix ms>.sqlite``; ``.damaged`` before the suffix: a file that could not be
#: read (``bricks/damage.py``), shown and expired like the others, never restored.
_NAME_RE = re.compile(r"^(p\d+\.\d+)\.(\d+)(\.damaged)?\.sqlite$")
#: The sweep runs this often at most (and at least 4 times per grace period).
SWEEP_EVERY_S = 600.0


def reorganized(old: ClusterMap | None, new: ClusterMap, brick: str,
                pid: PartitionId) -> str | None:
    """Why a finished move, split or merge of ``brick`` accounts for its replica of
    ``pid`` no longer being listed in ``new`` (so it is dropped, not quarantined), or None.

    ``old`` is the map the replicas were last reconciled with (None at start: then
    nothing is accounted for).  A move: ``pid`` was *outgoing* in an RG of mine (the
    source's cut-over happened, under its fence, after the target's last delta) and is
    active in another RG now.  A split or a merge: an RG of mine listed ``pid`` and now
    serves its whole key range with other active partitions that were incoming there
    before (children or an ancestor that the job built: the cut-over replaced it).  Anything else (a record that merely stopped listing it,
    a brick removed from its RG, a restart that missed the steps) is quarantined.  An
    incoming copy that is no longer listed (a rolled back move or split) is dropped: it
    was never served here."""
    if old is None:
        return None
    for rg in old.rgs_of_brick(brick):
        state = rg.partition_state(pid)
        if state is None:
            continue
        if state == "incoming" and rg.member_state(brick) is not None:
            # Never served here: a copy being built by a move or a split that was rolled
            # back (or finished elsewhere); it holds nothing the active replicas lack.
            return f"an incoming copy that {rg.name} no longer lists"
        now = new.partition_rg.get(pid) if _usable(new) else None
        if state == "outgoing" and now is not None and now.name != rg.name:
            return f"moved to {now.name}"
        after = new.rgs.get(rg.name)
        if after is None or after.member_state(brick) is None:
            continue
        # Only targets that were incoming here (built by the job) count: a record that
        # merely names other partitions has no data behind them.
        built = frozenset(p for p in after.active_partitions
                          if rg.partition_state(p) == "incoming")
        if _covers(built, pid):
            return f"split or merged in {rg.name} v{after.version}"
    return None


def _usable(cmap: ClusterMap) -> bool:
    try:
        cmap.partition_rg
    except ValueError:
        return False
    return True


def _covers(active: frozenset[PartitionId], pid: PartitionId) -> bool:
    """Whether ``active`` (without ``pid``) serves every key of ``pid``: an ancestor of
    it, or descendants whose shares add up to its own."""
    if pid in active:
        return False
    anc = pid
    while anc.depth > 0:
        anc = anc.parent()
        if anc in active:
            return True
    below = [p for p in active if p.depth > pid.depth and
             p.prefix & ((1 << pid.depth) - 1) == pid.prefix]
    return bool(below) and \
        sum(1 << (MAX_DEPTH - p.depth) for p in below) == 1 << (MAX_DEPTH - pid.depth)


def _damaged(path: Path) -> bool:
    m = _NAME_RE.match(path.name)
    return m is not None and m.group(3) is not None


class Quarantine:
    log = Logger()

    def __init__(self, data_dir: Path, storage: Storage, clock: IReactorTime,
                 metrics: Metrics, grace_s: float, *,
                 wall: Callable[[], float] = time.time,
                 run_in_thread: Callable[..., Any] | None = None) -> None:
        self.dir = Path(data_dir) / QUARANTINE_DIR
        self.storage = storage
        self.clock = clock
        self.metrics = metrics
        self.grace_s = grace_s
        #: File names carry wall-clock time: the grace period must survive restarts.
        self.wall = wall
        self._run_in_thread = run_in_thread
        self._sweep = LoopingCall(self.sweep)
        self._sweep.clock = clock

    def start(self) -> None:
        self._sweep.start(max(0.05, min(SWEEP_EVERY_S, self.grace_s / 4)), now=True)

    def stop(self) -> None:
        if self._sweep.running:
            self._sweep.stop()

    def put(self, pid: str, why: str) -> Path:
        """Move ``pid``'s replica aside; the caller has made the participant forget it."""
        dest = self.dir / f"{pid}.{int(self.wall() * 1000)}.sqlite"
        self.storage.quarantine_partition(pid, dest)
        self.metrics.inc("replicas_quarantined_total")
        self.log.warn("quarantined replica of {pid} as {file} ({why}); deleted after "
                      "{hours:g} h unless dds-admin repair restores it", pid=pid,
                      file=str(dest), why=why, hours=self.grace_s / 3600.0)
        return dest

    def files(self) -> list[tuple[str, float, Path]]:
        """``(pid, quarantined at (unix time), path)``, oldest first."""
        if not self.dir.is_dir():
            return []
        out = []
        for f in self.dir.iterdir():
            m = _NAME_RE.match(f.name)
            if m:
                out.append((m.group(1), int(m.group(2)) / 1000.0, f))
        return sorted(out, key=lambda t: t[1])

    def status(self) -> list[dict[str, Any]]:
        """What ``status`` shows: each quarantined file, its age and when it goes."""
        now = self.wall()
        out = []
        for pid, at, path in self.files():
            try:
                size = path.stat().st_size
            except OSError:
                size = 0
            out.append({"pid": pid, "file": path.name, "at": at, "bytes": size,
                        "damaged": _damaged(path),
                        "expires_in_s": round(max(0.0, at + self.grace_s - now), 1)})
        return out

    def sweep(self) -> int:
        """Delete the files older than the grace period; how many."""
        now = self.wall()
        n = 0
        for pid, at, path in self.files():
            if now - at < self.grace_s:
                continue
            for f in (Path(str(path) + "-wal"), path):
                if f.exists():
                    trash = f.with_name(f.name + ".expired")
                    os.replace(f, trash)
                    discard_gradually(trash, self.clock, run_in_thread=self._run_in_thread)
            n += 1
            self.metrics.inc("quarantine_expired_total")
            self.log.warn("deleted quarantined replica {file} of {pid}: older than "
                          "{hours:g} h", file=path.name, pid=pid,
                          hours=self.grace_s / 3600.0)
        return n

    def restore(self, pid: str, listed: bool) -> dict[str, Any]:
        """Put the newest quarantined file of ``pid`` back as this brick's replica, in
        place of an empty one (a re-listed partition gets an empty replica at once).
        ``listed``: an RG record of this brick lists ``pid`` (else the replica would be
        quarantined again at the next map change: change the record first)."""
        candidates = [(at, path) for p, at, path in self.files()
                      if p == pid and not _damaged(path)]
        if not candidates:
            raise InvalidRequest(f"no quarantined replica of {pid} here")
        if not listed:
            raise Refused(f"no RG of this brick lists {pid}: list it in a record first")
        if self.storage.has_partition(pid) and \
                self.storage.open_partition(pid).last_lsn() > 0:
            # A listed partition gets an empty replica at once; one that was ever
            # written holds data the quarantined file may lack.
            raise Refused(f"this brick already holds a written replica of {pid}")
        at, path = max(candidates)
        try:
            self.storage.replace_partition(pid, path)
        except ValueError as e:
            raise Refused(f"quarantined file {path.name} is not a replica of {pid}: "
                          f"{e}") from None
        self.metrics.inc("replicas_restored_total")
        self.log.warn("restored replica of {pid} from quarantine ({file})", pid=pid,
                      file=path.name)
        return {"pid": pid, "file": path.name, "quarantined_at": at}
