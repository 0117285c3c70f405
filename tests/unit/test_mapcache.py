"""The library's map cache (``dds.lib.mapcache``): in a move's cut-over, the RG taking the
partition is asked for the map first, since its members hold the record that routes the
partition before gossip brings it to the other bricks (DESIGN §8)."""

from __future__ import annotations

import random
from typing import Any

import pytest_twisted
from twisted.internet.defer import succeed

from dds.lib.mapcache import MapCache
from dds.maps import ClusterMap
from dds.partition import PartitionId
from dds.records import BrickRecord, ClusterRecord, Member, PartitionEntry, RGRecord

MOVING = PartitionId.parse("p1.1")
STAYING = PartitionId.parse("p1.0")


def _map(moving_from: str = "outgoing", moving_to: str = "incoming") -> ClusterMap:
    records: list[Any] = [ClusterRecord(version=1, name="dds", replication=2)]
    records += [BrickRecord(f"b{i}", 1, "127.0.0.1", 7000 + i) for i in range(1, 7)]
    records += [
        RGRecord("rg0", 2, [Member("b1"), Member("b2")],
                 [PartitionEntry(STAYING, "active"), PartitionEntry(MOVING, moving_from)]),
        RGRecord("rg1", 2, [Member("b3"), Member("b4")], [PartitionEntry(MOVING, moving_to)]),
        RGRecord("rg2", 1, [Member("b5"), Member("b6")], []),
    ]
    return ClusterMap.of(records)


class _Conn:
    def __init__(self, cmap: ClusterMap) -> None:
        self.cmap = cmap

    def send(self, msg: Any, timeout: float) -> Any:
        return succeed({"map": self.cmap.to_wire()})


def _cache(asked: list[int], served: ClusterMap) -> MapCache:
    def connect(host: str, port: int) -> Any:
        asked.append(port)
        return succeed(_Conn(served))
    cache = MapCache(["127.0.0.1:7001"], connect, random.Random(5))
    return cache


def test_the_takers_of_a_moving_partition_are_the_members_of_the_rg_taking_it() -> None:
    asked: list[int] = []
    cache = _cache(asked, _map())
    cache.map = _map()
    assert cache.takers([MOVING]) == ["b3", "b4"]
    assert cache.takers([STAYING]) == []


@pytest_twisted.ensureDeferred
async def test_a_refresh_asks_the_preferred_bricks_first() -> None:
    for seed in range(20):                      # whatever the shuffle of the others
        asked: list[int] = []
        cache = _cache(asked, _map())
        cache.rng = random.Random(seed)
        cache.map = _map()
        await cache.refresh(prefer=["b4", "b3"])
        assert asked == [7004]                  # the first one answered


@pytest_twisted.ensureDeferred
async def test_a_record_giving_a_partition_away_makes_the_refresh_ask_its_taker() -> None:
    """A brick of the source RG answers ``StaleMap`` with its record listing the partition
    ``outgoing``; once adopted, the map no longer tiles the keys, and the whole map is
    fetched from the RG that takes the partition in, not from any brick."""
    for seed in range(20):
        asked: list[int] = []
        cache = _cache(asked, _map(moving_from="active", moving_to="active"))
        cache.rng = random.Random(seed)
        cache.map = _map()                          # rg0's outgoing record adopted
        await cache._complete(cache.map.rgs["rg0"])
        assert asked[0] in (7003, 7004), (seed, asked)
