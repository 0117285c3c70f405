"""The brick's copy of the cluster map: persisted, merged, and checked on every operation.

``check`` is on the hot path of every GET and PREPARE: one dict probe for the RG record
and two integer compares.  A caller that routed by another version gets ``StaleMap``
carrying this brick's record, so the library can repair its map without another request:
also one with this brick's version but another fingerprint, which is the caller's stale or
made-up view.  A *divergence* (two bricks holding different records at one version) is
found only where bricks' records meet: ``merge`` (gossip, a push).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import msgpack
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dds.bricks.atomicfile import replace_file
from dds.errors import InvalidRequest, NotServing, Refused, StaleMap
from dds.maps import ClusterMap, MergeResult
from dds.metrics import Metrics
from dds.ratelimit import LogLimiter
from dds.partition import PartitionId
from dds.records import Record, RGRecord

if TYPE_CHECKING:
    from dds.bricks.partstore import Durability

MAP_FILE = "map.msgpack"


@functools.lru_cache(maxsize=65536)
def parse_pid(text: str) -> PartitionId:
    try:
        return PartitionId.parse(text)
    except ValueError as e:
        raise InvalidRequest(str(e)) from None


class MapState:
    log = Logger()

    def __init__(self, brick_id: str, data_dir: Path, metrics: Metrics, *,
                 durability: Durability = "fsync", clock: IReactorTime | None = None) -> None:
        self.brick_id = brick_id
        #: As durable as the data (DESIGN §4): fsynced only in ``fsync`` mode (atomicfile).
        self.fsync = durability == "fsync"
        self.path = Path(data_dir) / MAP_FILE
        self.metrics = metrics
        self.map = ClusterMap()
        self._listeners: list[Callable[[ClusterMap, tuple[Record, ...]], None]] = []
        #: Refused records arrive again with every gossip round from a peer that holds
        #: them: one line per record and window, not one per round.
        self._refusals = LogLimiter(clock, self.log, per_window=5, window_s=60.0) \
            if clock is not None else None
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            data = msgpack.unpackb(self.path.read_bytes(), raw=False)
            self.map = ClusterMap.from_wire(data)
        except (ValueError, msgpack.UnpackException) as e:
            # A torn map file cannot happen (atomic rename); a corrupt one is an operator
            # problem, and peers will gossip the map back, so start empty and say so.
            self.log.error("ignoring unreadable map file {path}: {error}", path=str(self.path),
                           error=str(e))
            self.metrics.inc("map_load_failures_total")
        else:
            self.log.info("loaded map with {n} records, fp {fp:#010x}", n=len(self.map),
                          fp=self.map.fp)

    def _save(self) -> None:
        replace_file(self.path, msgpack.packb(self.map.to_wire(), use_bin_type=True),
                     fsync=self.fsync)

    def on_change(self, listener: Callable[[ClusterMap, tuple[Record, ...]], None]) -> None:
        self._listeners.append(listener)

    def refusal(self, records: Iterable[Record]) -> str | None:
        """Why this brick would not adopt ``records`` (``ClusterMap.refusal``), or None.
        A voter asks this before it votes for a record change, so that a change that
        would be refused at its commit is refused at its vote."""
        result = self.map.merge_checked(records)
        if result.refused:
            record, problem = result.refused[0]
            return f"{record.record_id} at version {record.version}: {problem}"
        return None

    def check_acceptable(self, records: Iterable[Record]) -> None:
        """``Refused`` if ``refusal`` names a problem."""
        problem = self.refusal(records)
        if problem is not None:
            raise Refused(f"brick {self.brick_id} refuses {problem}")

    def merge(self, records: Iterable[Record], source: str) -> MergeResult:
        """Adopt every record newer than ours that leaves the map usable (a whole key
        space of active or outgoing partitions, none active twice: ``ClusterMap.refusal``);
        persist before anyone can act on it.  Refused records are counted and logged
        (rate-limited) and reported in the result: a forged or mistaken record must not
        make bricks drop their replicas (issue 13)."""
        result = self.map.merge_checked(records)
        for record, problem in result.refused:
            self.metrics.inc("map_records_refused_total")
            fields = dict(record=f"{record.record_id}@{record.version}", source=source,
                          problem=problem)
            fmt = "refused map record {record} from {source}: {problem}"
            if self._refusals is not None:
                self._refusals.warn(fmt, **fields)
            else:
                self.log.warn(fmt, **fields)
        for c in result.conflicts:
            self.metrics.inc("map_divergence_total")
            self.log.error("MAP DIVERGENCE from {source}: {conflict}; run dds-admin repair",
                           source=source, conflict=str(c))
        if result.adopted:
            self.map = result.map
            self._save()
            self.metrics.inc("map_records_adopted_total", len(result.adopted))
            self.log.info("adopted {records} from {source}; map fp {fp:#010x}",
                          records=[f"{r.record_id}@{r.version}" for r in result.adopted],
                          source=source, fp=self.map.fp)
            for listener in self._listeners:
                listener(self.map, result.adopted)
        return result

    def check(self, pid_text: str, rg: str, version: int, fp: int) -> tuple[PartitionId,
                                                                          RGRecord]:
        """The data-operation gate of DESIGN §2: same record, partition active, me active."""
        rec = self.map.rgs.get(rg)
        if rec is None:
            self.metrics.inc("stale_map_total")
            raise StaleMap(f"brick {self.brick_id} knows no replica group {rg!r}")
        if rec.version != version:
            self.metrics.inc("stale_map_total")
            raise StaleMap(f"{rg} is at version {rec.version} here, caller has {version}",
                           rec.canonical())
        if rec.fp != fp:
            # The caller's view, not a brick's record: a stale, corrupted or made-up
            # (rg_version, rg_fp) proves nothing about the bricks, so it is a plain
            # StaleMap carrying our record (the caller repairs), never a divergence --
            # which is only ever found between bricks' records (``merge``).  Counted apart,
            # so that a client sending wrong fingerprints shows in the metrics.
            self.metrics.inc("stale_map_total")
            self.metrics.inc("stale_map_fp_total")
            raise StaleMap(f"{rg} v{version}: fingerprint {rec.fp:#010x} here, "
                           f"{fp:#010x} at caller", rec.canonical())
        pid = parse_pid(pid_text)
        if pid not in rec.active_partitions:
            self.metrics.inc("stale_map_total")
            raise StaleMap(f"{pid} is not active in {rg} v{version}", rec.canonical())
        if self.brick_id not in rec.active_members:
            raise NotServing(f"brick {self.brick_id} is not an active member of {rg}")
        return pid, rec

    def my_partitions(self) -> set[PartitionId]:
        """Partitions this brick should hold a replica of, under the current map."""
        out: set[PartitionId] = set()
        for rec in self.map.rgs.values():
            if rec.member_state(self.brick_id) is not None:
                out.update(e.pid for e in rec.partitions)
        return out
