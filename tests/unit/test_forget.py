"""Forgotten bricks in the map: a tombstone record at the next version that
``ClusterMap.bricks`` leaves out, and that a new registration outranks."""

from __future__ import annotations

from dds.maps import ClusterMap
from dds.records import BrickRecord, ClusterRecord

from dds.tools.forget import tombstone


def _map(*bricks: BrickRecord) -> ClusterMap:
    return ClusterMap.of([ClusterRecord("dds", 1, 2), *bricks])


def test_the_tombstone_is_the_next_version_marked_forgotten() -> None:
    retired = BrickRecord("b4", 3, "127.0.0.1", 7404, "retired:h4")
    gone = tombstone(retired)
    assert (gone.version, gone.host) == (4, "forgotten:h4")
    assert gone.forgotten and gone.retired
    assert not retired.forgotten and retired.retired


def test_a_forgotten_brick_is_not_among_the_maps_bricks() -> None:
    live = BrickRecord("b1", 1, "127.0.0.1", 7401, "h1")
    cmap = _map(live, tombstone(BrickRecord("b4", 3, "127.0.0.1", 7404, "retired:h4")))
    assert list(cmap.bricks) == ["b1"]
    assert sorted(cmap.brick_records) == ["b1", "b4"]


def test_gossip_of_the_old_retired_record_does_not_bring_it_back() -> None:
    retired = BrickRecord("b4", 3, "127.0.0.1", 7404, "retired:h4")
    cmap = _map(tombstone(retired))
    assert "b4" not in cmap.merge([retired]).map.bricks


def test_a_registration_above_the_tombstone_brings_the_id_back() -> None:
    gone = tombstone(BrickRecord("b4", 3, "127.0.0.1", 7404, "retired:h4"))
    again = BrickRecord("b4", gone.version + 1, "127.0.0.2", 7404, "h9")
    assert _map(gone).merge([again]).map.bricks["b4"] == again
