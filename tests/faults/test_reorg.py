"""The fault runner's reorganizer (tests/faults/reorg.py): the jobs it picks are ones the
map allows, and it reads every kind of fence from the brick log lines."""

from __future__ import annotations

import random

from dds.maps import ClusterMap
from dds.partition import PartitionId
from dds.records import BrickRecord, ClusterRecord, Member, PartitionEntry, RGRecord

from tests.faults.reorg import MAX_DEPTH, choose, fence_held


def _map(rgs: dict[str, list[str]]) -> ClusterMap:
    records: list = [ClusterRecord(version=1, name="dds", replication=1)]
    records += [BrickRecord(f"b{i}", 1, "127.0.0.1", 7000 + i) for i in (1, 2)]
    records += [RGRecord(name, 1, [Member(f"b{i + 1}")],
                         [PartitionEntry(PartitionId.parse(p), "active") for p in pids])
                for i, (name, pids) in enumerate(sorted(rgs.items()))]
    return ClusterMap({r.record_id: r for r in records})


def test_every_chosen_job_is_one_the_map_allows() -> None:
    cmap = _map({"rg0": ["p2.0", "p2.2", "p1.1"], "rg1": []})
    leaves = cmap.partition_rg
    rng = random.Random(3)
    seen = set()
    for _ in range(200):
        job = choose(cmap, rng)
        assert job is not None
        seen.add(job[0])
        pid = PartitionId.parse(job[1])
        assert pid in leaves
        if job[0] == "merge":
            assert leaves[pid.sibling()] is leaves[pid]
        elif job[0] == "move":
            assert job[2:] == ["--to", "rg1"]
        else:
            assert pid.depth < MAX_DEPTH
    assert seen == {"split", "merge", "move"}


def test_fence_log_lines_of_each_kind_are_read() -> None:
    assert fence_held("job split-1: fence on ['p1.0'] lifted after 0.125s: released") == \
        ("split", 0.125)
    assert fence_held("copy session 17: fence on ['p2.0'] lifted after 2.004s") == \
        ("copy", 2.004)
    assert fence_held("rg0: copied 10 bytes from b1 in 0.20s; writes were fenced 0.056s") \
        == ("recovery", 0.056)
    assert fence_held("rg0 v3: b3 active (re-synced by partition copy)") is None
