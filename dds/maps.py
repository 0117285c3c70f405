"""The cluster map: all records, merged by per-record version (DESIGN §2).

A ``ClusterMap`` is immutable; learning a record makes a new map.  The DP trie and the
partition → RG index are derived from the RG records (each *active* partition names its RG)
and built once per map, so routing a key costs a hash and a dict probe.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, Iterator, Mapping

import attrs

from dds.partition import DPTrie, PartitionId, key_hash
from dds.records import (BrickRecord, ClusterRecord, Record, RGRecord, fingerprint,
                         record_from_wire)

#: (record id, version, fingerprint): what gossip exchanges before any record.
DigestEntry = tuple[str, int, int]


class MapConflict(ValueError):
    """Two records with the same id and version but different contents."""

    def __init__(self, mine: Record, theirs: Record) -> None:
        super().__init__(f"divergent {mine.record_id} at version {mine.version}: "
                         f"fingerprints {mine.fp:#010x} and {theirs.fp:#010x}")
        self.mine = mine
        self.theirs = theirs


@attrs.frozen
class MergeResult:
    map: "ClusterMap"
    #: Records the other side had newer (now adopted).
    adopted: tuple[Record, ...]
    #: Same version, different fingerprint: never adopted automatically.
    conflicts: tuple[MapConflict, ...]


@attrs.frozen
class ClusterMap:
    records: Mapping[str, Record] = attrs.field(factory=dict)

    @classmethod
    def of(cls, records: Iterable[Record]) -> "ClusterMap":
        return cls({r.record_id: r for r in records})

    @classmethod
    def from_wire(cls, data: Any) -> "ClusterMap":
        if not isinstance(data, list):
            raise ValueError("malformed map: expected a list of records")
        return cls.of(record_from_wire(r) for r in data)

    def to_wire(self) -> list[Any]:
        return [self.records[k].canonical() for k in sorted(self.records)]

    # -- views ---------------------------------------------------------------------------

    @property
    def cluster(self) -> ClusterRecord | None:
        r = self.records.get("cluster")
        return r if isinstance(r, ClusterRecord) else None

    @functools.cached_property
    def bricks(self) -> dict[str, BrickRecord]:
        return {r.id: r for r in self.records.values() if isinstance(r, BrickRecord)}

    @functools.cached_property
    def rgs(self) -> dict[str, RGRecord]:
        return {r.name: r for r in self.records.values() if isinstance(r, RGRecord)}

    def get(self, record_id: str) -> Record | None:
        return self.records.get(record_id)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records.values())

    def __len__(self) -> int:
        return len(self.records)

    @functools.cached_property
    def partition_rg(self) -> dict[PartitionId, RGRecord]:
        """Each active partition's RG.  A partition active in two RGs is a map error."""
        out: dict[PartitionId, RGRecord] = {}
        for rg in self.rgs.values():
            for pid in rg.active_partitions:
                other = out.get(pid)
                if other is not None:
                    raise ValueError(f"partition {pid} is active in both {other.name} "
                                     f"and {rg.name}")
                out[pid] = rg
        return out

    @functools.cached_property
    def trie(self) -> DPTrie:
        return DPTrie(self.partition_rg)

    def route(self, key: bytes) -> tuple[PartitionId, RGRecord]:
        pid = self.trie.lookup_hash(key_hash(key))
        return pid, self.partition_rg[pid]

    def rgs_of_brick(self, brick: str) -> list[RGRecord]:
        return [rg for rg in self.rgs.values() if rg.member_state(brick) is not None]

    # -- versions and fingerprints -------------------------------------------------------

    @functools.cached_property
    def digest(self) -> tuple[DigestEntry, ...]:
        return tuple((k, self.records[k].version, self.records[k].fp)
                     for k in sorted(self.records))

    @functools.cached_property
    def fp(self) -> int:
        """Fingerprint of the whole map: over every (record id, version, fp), sorted."""
        return fingerprint([list(d) for d in self.digest])

    @property
    def version(self) -> int:
        """Sum of record versions: grows with every change; for display, not for safety."""
        return sum(r.version for r in self.records.values())

    # -- merging -------------------------------------------------------------------------

    def merge(self, others: Iterable[Record]) -> MergeResult:
        """Keep, per record, the higher version.  Same version + different fp is a
        conflict: reported, never resolved here (``dds-admin repair`` does that)."""
        records = dict(self.records)
        adopted: list[Record] = []
        conflicts: list[MapConflict] = []
        for theirs in others:
            mine = records.get(theirs.record_id)
            if mine is None or theirs.version > mine.version:
                records[theirs.record_id] = theirs
                adopted.append(theirs)
            elif theirs.version == mine.version and theirs.fp != mine.fp:
                conflicts.append(MapConflict(mine, theirs))
        new = ClusterMap(records) if adopted else self
        return MergeResult(new, tuple(adopted), tuple(conflicts))

    def newer_than(self, digest: Iterable[DigestEntry]) -> tuple[list[Record], list[str]]:
        """Compare with a peer's digest: (my records newer than theirs or unknown to them,
        ids of records where theirs is newer or unknown to me)."""
        theirs = {rid: v for rid, v, _fp in digest}
        send = [r for rid, r in self.records.items() if theirs.get(rid, -1) < r.version]
        want = [rid for rid, v in theirs.items()
                if rid not in self.records or self.records[rid].version < v]
        return send, want
