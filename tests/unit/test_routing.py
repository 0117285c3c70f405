"""The choice of a replica for a read (DESIGN §3): least outstanding, random tie-break."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from dds.partition import PartitionId
from dds.records import BrickRecord, Member, PartitionEntry, RGRecord

from dds.lib.routing import Route, pick_replica


class Conn:
    def __init__(self, outstanding: int) -> None:
        self.outstanding = outstanding


def _route() -> Route:
    bricks = [BrickRecord(f"b{i}", 1, "127.0.0.1", 7400 + i) for i in (1, 2, 3)]
    pid = PartitionId(0, 0)
    rg = RGRecord("rg0", 1, tuple(Member(b.id) for b in bricks), (PartitionEntry(pid),))
    return Route(pid, rg, bricks)


def _conns(*loads: int | None) -> dict[tuple[str, int], Any]:
    return {("127.0.0.1", 7401 + i): Conn(load) for i, load in enumerate(loads)
            if load is not None}


def _picks(loads: dict[tuple[str, int], Any], exclude: frozenset[str] = frozenset(),
           n: int = 3000) -> Counter[str]:
    rng = random.Random(7)
    route = _route()
    counts: Counter[str] = Counter()
    for _ in range(n):
        b = pick_replica(route, exclude, loads, rng)
        counts[b.id if b is not None else "none"] += 1
    return counts


def test_the_least_loaded_replica_is_chosen() -> None:
    assert _picks(_conns(5, 2, 9)) == Counter({"b2": 3000})


def test_equally_loaded_replicas_share_the_reads_evenly() -> None:
    counts = _picks(_conns(1, 1, 1))
    assert set(counts) == {"b1", "b2", "b3"}
    assert all(800 <= n <= 1200 for n in counts.values()), counts


def test_a_tie_between_two_leaves_the_busier_one_out() -> None:
    counts = _picks(_conns(3, 0, 0))
    assert set(counts) == {"b2", "b3"}
    assert all(1300 <= n <= 1700 for n in counts.values()), counts


def test_a_replica_without_a_connection_counts_as_idle() -> None:
    assert _picks(_conns(4, None, 1)) == Counter({"b2": 3000})


def test_excluded_replicas_are_never_chosen() -> None:
    assert _picks(_conns(0, 5, 9), exclude=frozenset({"b1"})) == Counter({"b2": 3000})


def test_nothing_is_chosen_when_every_replica_is_excluded() -> None:
    assert _picks(_conns(0, 0, 0), exclude=frozenset({"b1", "b2", "b3"}), n=1) == Counter(
        {"none": 1})
