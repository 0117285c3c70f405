"""What a brick may adopt (issue 13): versions in range, and maps whose RG records still
route every key (``ClusterMap.layout_problem`` / ``refusal`` / ``merge_checked``),
including the intermediate maps of a move and a split."""

from __future__ import annotations

import pytest

from dds.maps import ClusterMap
from dds.partition import PartitionId, initial_partitions
from dds.records import (MAX_VERSION, BrickRecord, ClusterRecord, Member, PartitionEntry,
                         RGRecord, record_from_wire)

P = PartitionId.parse


def _rg(name: str, version: int, parts: dict[str, str]) -> RGRecord:
    return RGRecord(name, version, (Member("b1"), Member("b2")),
                    [PartitionEntry(P(p), s) for p, s in parts.items()])


def _base() -> ClusterMap:
    """rg0 serves p2.0 and p2.2, rg1 serves p2.1 and p2.3."""
    return ClusterMap.of([ClusterRecord("dds", 1, 2),
                          BrickRecord("b1", 1, "127.0.0.1", 7401),
                          _rg("rg0", 1, {"p2.0": "active", "p2.2": "active"}),
                          _rg("rg1", 1, {"p2.1": "active", "p2.3": "active"})])


def test_a_version_at_or_above_the_bound_is_refused_naming_the_record() -> None:
    wire = _rg("rg1", 1, {}).canonical()
    for bad in (MAX_VERSION, 2**64 - 1):
        wire[2] = bad
        with pytest.raises(ValueError, match=r"rg/rg1.*out of range"):
            record_from_wire(wire)


def test_the_bound_leaves_room_below_the_sqlite_integer_limit() -> None:
    assert MAX_VERSION < 2**63 - 1
    assert _rg("rg1", MAX_VERSION - 1, {}).version == MAX_VERSION - 1


def test_a_complete_map_has_no_layout_problem() -> None:
    assert _base().layout_problem() is None


def test_a_record_listing_no_partitions_is_refused() -> None:
    cmap = _base()
    result = cmap.merge_checked([_rg("rg0", 2, {})])
    assert result.adopted == ()
    assert result.map is cmap or result.map.rgs["rg0"].version == 1
    (record, problem), = result.refused
    assert record.record_id == "rg/rg0"
    assert "do not cover the whole key space" in problem


def test_a_partition_active_in_two_groups_is_refused() -> None:
    result = _base().merge_checked([_rg("rg1", 2, {"p2.1": "active", "p2.3": "active",
                                                   "p2.0": "active"})])
    assert result.adopted == ()
    assert "active in both" in result.refused[0][1]


def test_overlapping_active_partitions_are_refused() -> None:
    result = _base().merge_checked([_rg("rg1", 2, {"p2.1": "active", "p2.3": "active",
                                                   "p1.0": "active"})])
    assert "overlap" in result.refused[0][1]


def test_a_range_listed_only_incoming_is_refused() -> None:
    result = _base().merge_checked([_rg("rg0", 2, {"p2.0": "incoming", "p2.2": "active"})])
    assert result.refused and not result.adopted


def test_every_step_of_a_move_is_adopted_one_record_at_a_time() -> None:
    """tools/move.py: target incoming, source outgoing (the range routes nowhere),
    target active, source drops it; and the rollback of an outgoing entry."""
    steps = [
        _rg("rg1", 2, {"p2.1": "active", "p2.3": "active", "p2.0": "incoming"}),
        _rg("rg0", 2, {"p2.0": "outgoing", "p2.2": "active"}),
        _rg("rg1", 3, {"p2.1": "active", "p2.3": "active", "p2.0": "active"}),
        _rg("rg0", 3, {"p2.2": "active"}),
    ]
    cmap = _base()
    for record in steps:
        result = cmap.merge_checked([record])
        assert result.refused == (), result.refused
        cmap = result.map
    rolled_back = _base().merge_checked(steps[:2]).map.merge_checked(
        [_rg("rg0", 3, {"p2.0": "active", "p2.2": "active"}),
         _rg("rg1", 3, {"p2.1": "active", "p2.3": "active"})])
    assert rolled_back.refused == ()


def test_a_move_learnt_in_one_gossip_exchange_is_adopted_whatever_the_order() -> None:
    """Target active and source outgoing arrive together: target first alone would be
    active twice, so the records are checked together (and one at a time if needed)."""
    cmap = _base().merge_checked(
        [_rg("rg1", 2, {"p2.1": "active", "p2.3": "active", "p2.0": "incoming"})]).map
    result = cmap.merge_checked([
        _rg("rg1", 3, {"p2.1": "active", "p2.3": "active", "p2.0": "active"}),
        _rg("rg0", 2, {"p2.0": "outgoing", "p2.2": "active"})])
    assert result.refused == () and len(result.adopted) == 2


def test_one_bad_record_does_not_hold_back_the_good_ones() -> None:
    result = _base().merge_checked([
        _rg("rg0", 2, {}),
        _rg("rg1", 2, {"p2.1": "active", "p2.3": "active", "p2.0": "incoming"})])
    assert [r.record_id for r in result.adopted] == ["rg/rg1"]
    assert [r.record_id for r, _ in result.refused] == ["rg/rg0"]


def test_every_step_of_a_split_and_a_merge_is_adopted() -> None:
    """tools/split.py: targets incoming next to the active source, then one change:
    source gone, targets active; a merge is the same the other way."""
    steps = [
        _rg("rg0", 2, {"p2.0": "active", "p2.2": "active", "p3.0": "incoming",
                       "p3.4": "incoming"}),
        _rg("rg0", 3, {"p2.2": "active", "p3.0": "active", "p3.4": "active"}),
        _rg("rg0", 4, {"p2.2": "active", "p3.0": "active", "p3.4": "active",
                       "p2.0": "incoming"}),
        _rg("rg0", 5, {"p2.2": "active", "p2.0": "active"}),
    ]
    cmap = _base()
    for record in steps:
        result = cmap.merge_checked([record])
        assert result.refused == (), result.refused
        cmap = result.map


def test_an_empty_brick_adopts_a_whole_pushed_map() -> None:
    result = ClusterMap().merge_checked(list(_base()))
    assert result.refused == () and result.map.layout_problem() is None


def test_an_empty_brick_adopts_records_before_any_partition_exists() -> None:
    result = ClusterMap().merge_checked([ClusterRecord("dds", 1, 2),
                                         _rg("rg0", 1, {})])
    assert result.refused == ()


def test_an_empty_brick_refuses_a_partial_layout() -> None:
    result = ClusterMap().merge_checked([_rg("rg0", 1, {"p1.0": "active"})])
    assert result.adopted == () and result.refused


def test_a_map_already_unusable_adopts_records_so_that_repair_can_mend_it() -> None:
    broken = ClusterMap.of([_rg("rg0", 2, {}), _rg("rg1", 1, {"p1.1": "active"})])
    assert broken.layout_problem() is not None
    result = broken.merge_checked([_rg("rg0", 3, {"p1.0": "active"})])
    assert result.refused == () and result.map.layout_problem() is None


def test_initial_layouts_of_any_size_are_usable() -> None:
    for n in (1, 2, 16, 64):
        cmap = ClusterMap.of([RGRecord("rg0", 1, (Member("b1"),),
                                       [PartitionEntry(p) for p in initial_partitions(n)])])
        assert cmap.layout_problem() is None


def test_records_that_make_no_layout_are_adopted_next_to_a_refused_one() -> None:
    result = _base().merge_checked([_rg("rg0", 2, {}),
                                    BrickRecord("b1", 2, "127.0.0.2", 7401)])
    assert [r.record_id for r in result.adopted] == ["brick/b1"]
    assert result.map.bricks["b1"].address == "127.0.0.2"
