"""The cluster map: all records, merged by per-record version (DESIGN §2).

A ``ClusterMap`` is immutable; learning a record makes a new map.  The DP trie and the
partition → RG index are derived from the RG records (each *active* partition names its RG)
and built once per map, so routing a key costs a hash and a dict probe.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, Iterator, Mapping

import attrs

from dds.partition import MAX_DEPTH, DPTrie, PartitionId, key_hash
from dds.records import (BrickRecord, ClusterRecord, DRRecord, Record, RGRecord, fingerprint,
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
    #: Newer records not adopted because the map would be unusable with them (see
    #: ``ClusterMap.refusal``), each with the problem.
    refused: tuple[tuple[Record, str], ...] = ()


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
    def dr(self) -> DRRecord | None:
        """This site's disaster-recovery record (DESIGN §12); None: a primary alone."""
        r = self.records.get("dr")
        return r if isinstance(r, DRRecord) else None

    @functools.cached_property
    def bricks(self) -> dict[str, BrickRecord]:
        """The bricks of the cluster: every brick record but the tombstones of forgotten
        bricks (``dds-admin forget-brick``), which nothing contacts, lists or places."""
        return {r.id: r for r in self.records.values()
                if isinstance(r, BrickRecord) and not r.forgotten}

    @functools.cached_property
    def brick_records(self) -> dict[str, BrickRecord]:
        """Every brick record, forgotten ones included (a new record for the same id
        must be at a higher version than the tombstone)."""
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

    # -- layout checks -------------------------------------------------------------------

    @functools.cached_property
    def listed_partitions(self) -> frozenset[PartitionId]:
        """Every partition some RG record lists, in any state."""
        return frozenset(e.pid for rg in self.rgs.values() for e in rg.partitions)

    def layout_problem(self) -> str | None:
        """What makes this map unusable for routing, or None.

        Usable: no partition is active in two RGs, no two active partitions overlap, and
        every key lies in a partition that is *active or outgoing* somewhere.  Outgoing
        counts because a move's cut-over (``tools/move.py`` steps 5-6) has the partition
        outgoing in the source RG and still incoming in the target: the range routes
        nowhere for a moment, but its data is still listed (and kept) by the source.  A
        key range that only ``incoming`` entries list, or that nobody lists, has lost its
        data: adopting such a map would drop the replicas (issue 13).  A map listing no
        partition at all is the state before ``dds-admin init`` and is reported too; the
        caller decides (``refusal``)."""
        try:
            active = self.partition_rg
        except ValueError as e:
            return str(e)
        present = set(active)
        for pid in active:
            anc = pid
            while anc.depth > 0:
                anc = anc.parent()
                if anc in present:
                    return (f"partitions {anc} (active in {active[anc].name}) and {pid} "
                            f"(active in {active[pid].name}) overlap")
        covering = {e.pid for rg in self.rgs.values() for e in rg.partitions
                    if e.state in ("active", "outgoing")}
        if not covering:
            return "no replica group lists an active partition"
        outer = [p for p in covering if not _has_ancestor_in(p, covering)]
        share = sum(1 << (MAX_DEPTH - p.depth) for p in outer)
        if share != 1 << MAX_DEPTH:
            missing = 1.0 - share / float(1 << MAX_DEPTH)
            return (f"partitions do not cover the whole key space ({missing:.2%} of it "
                    "is in no active or outgoing partition)")
        return None

    def refusal(self, new: "ClusterMap") -> str | None:
        """Why going from this map to ``new`` must not happen, or None.

        ``new`` must be usable (``layout_problem``), with two exceptions that keep a
        brick from being stuck: a map that lists no partition yet (before init) may stay
        so, and a brick whose map is already unusable (damaged before this check
        existed) adopts what it is given, so that ``dds-admin repair`` can mend it."""
        problem = new.layout_problem()
        if problem is None:
            return None
        if not new.listed_partitions and not self.listed_partitions:
            return None
        if self.listed_partitions and self.layout_problem() is not None:
            return None
        return problem

    def merge_checked(self, others: Iterable[Record]) -> MergeResult:
        """``merge``, adopting only what leaves a usable map (``refusal``).

        The records usually come together (a gossip exchange, a push of the whole map)
        and are checked together first: a move's cut-over is two records, each of which
        alone may be refused.  If the whole is refused, records are adopted one at a time
        while any of them is acceptable on its own, so that one bad record does not hold
        back the good ones; what is left is refused, each with its problem."""
        result = self.merge(others)
        if not result.adopted or self.refusal(result.map) is None:
            return result
        # Only RG records make the layout; the others are adopted as they come.
        adopted: list[Record] = [r for r in result.adopted if not isinstance(r, RGRecord)]
        current = self.merge(adopted).map
        remaining = [r for r in result.adopted if isinstance(r, RGRecord)]
        progress = True
        while remaining and progress:
            progress = False
            for record in list(remaining):
                candidate = current.merge([record]).map
                if current.refusal(candidate) is None:
                    current = candidate
                    adopted.append(record)
                    remaining.remove(record)
                    progress = True
        refused = tuple((r, str(current.refusal(current.merge([r]).map))) for r in remaining)
        return MergeResult(current, tuple(adopted), result.conflicts, refused)

    def newer_than(self, digest: Iterable[DigestEntry]) -> tuple[list[Record], list[str]]:
        """Compare with a peer's digest: (my records newer than theirs or unknown to them,
        ids of records where theirs is newer or unknown to me)."""
        theirs = {rid: v for rid, v, _fp in digest}
        send = [r for rid, r in self.records.items() if theirs.get(rid, -1) < r.version]
        want = [rid for rid, v in theirs.items()
                if rid not in self.records or self.records[rid].version < v]
        return send, want


def _has_ancestor_in(pid: PartitionId, pids: set[PartitionId]) -> bool:
    anc = pid
    while anc.depth > 0:
        anc = anc.parent()
        if anc in pids:
            return True
    return False
