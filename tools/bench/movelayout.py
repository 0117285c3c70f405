"""``bench move``'s fixed layout and parameters: two replica groups with disjoint
members, the partitions each keeps, the one that moves, its keys, and the map records
that say so (see :mod:`dds.tools.bench.move` for why it is this shape)."""

from __future__ import annotations

from typing import Any

import attrs

from dds.partition import PartitionId
from dds.tools.bench.preload import partition_key
from dds.tools.bench.throwaway import CLUSTER, HOST
from dds.tools.bench.writers import WriterParams

__all__ = ["KEPT", "MOVED", "MoveParams", "SOURCE_BRICKS", "SOURCE_RG", "TARGETS",
           "TARGET_BRICKS", "TARGET_RG", "cluster_records", "copy_rate", "move_key"]

#: The issue's targets: longest write pause in ms, throughput during the move as a
#: fraction of the throughput before it.
TARGETS = {"max_write_pause_ms": 100.0, "throughput_ratio": 0.7}
SOURCE_RG, TARGET_RG = "rg0", "rg1"
SOURCE_BRICKS = ("b1", "b2", "b3")
TARGET_BRICKS = ("b4", "b5", "b6")
MOVED = PartitionId(2, 0)
#: The partitions each group keeps.
KEPT = {"rg0": (PartitionId(2, 2),), "rg1": (PartitionId(2, 1), PartitionId(2, 3))}


@attrs.frozen
class MoveParams(WriterParams):
    #: 550,000 keys of 100-byte values make the issue's 100 MB partition (99.3 MB file).
    keys: int = 550_000
    #: How long the writers go on after the move returned.
    after_s: float = 1.0
    #: Bandwidth limit of each target's copy, MB/s (None: the bricks' default
    #: ``brick.move_rate_mb_s``, as for ``dds-admin move``; 0: unlimited).
    rate_mb_s: int | None = None


def move_key(i: int, pid: PartitionId = MOVED) -> bytes:
    """The ``i``-th key of the bench, one that routes to ``pid``."""
    return partition_key(i, pid)


def copy_rate(params: MoveParams) -> int:
    """The bandwidth limit of each target's copy in effect (0: none)."""
    if params.rate_mb_s is not None:
        return params.rate_mb_s
    from dds.config import BrickSection
    default = attrs.fields(BrickSection).move_rate_mb_s.default
    return int(default or 0)


def cluster_records(bricks: list[Any]) -> list[Any]:
    """The map: two RGs with disjoint members, ``MOVED`` and others in the first, the
    rest in the second (checked to be a complete map)."""
    from dds.maps import ClusterMap
    from dds.records import BrickRecord, ClusterRecord, Member, PartitionEntry, RGRecord

    records: list[Any] = [ClusterRecord(CLUSTER, 1, len(SOURCE_BRICKS))]
    records += [BrickRecord(b.id, 1, HOST, b.port, b.id) for b in bricks]
    records.append(RGRecord(SOURCE_RG, 1, [Member(b) for b in SOURCE_BRICKS],
                            [PartitionEntry(p) for p in (MOVED, *KEPT[SOURCE_RG])]))
    records.append(RGRecord(TARGET_RG, 1, [Member(b) for b in TARGET_BRICKS],
                            [PartitionEntry(p) for p in KEPT[TARGET_RG]]))
    # The trie raises if the partitions do not cover every key exactly once.
    if ClusterMap.of(records).route(move_key(0))[1].name != SOURCE_RG:
        raise ValueError(f"the bench's keys do not route to {SOURCE_RG}")
    return records
