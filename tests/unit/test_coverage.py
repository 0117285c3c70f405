"""``dds-admin repair``, step ``coverage``: what it detects (tools/coverage.py)."""

from __future__ import annotations

from typing import Any

from dds.maps import ClusterMap
from dds.partition import PartitionId
from dds.records import Member, PartitionEntry, RGRecord
from dds.tools.coverage import diagnose, restorable


def _rg(name: str, parts: dict[str, str], members: tuple[str, ...]) -> RGRecord:
    return RGRecord(name, 1, tuple(Member(m) for m in members),
                    [PartitionEntry(PartitionId.parse(p), s) for p, s in parts.items()])


def _status(partitions: list[str], quarantine: list[str] = []) -> dict[str, Any]:
    return {"partitions": partitions,
            "quarantine": [{"pid": p, "file": f"{p}.1.sqlite", "expires_in_s": 10.0}
                           for p in quarantine]}


def test_a_lost_partition_is_reported_with_the_bricks_that_hold_it_in_quarantine() -> None:
    cmap = ClusterMap.of([_rg("rg0", {"p1.1": "active"}, ("b1", "b2"))])
    report = diagnose(cmap, {"b1": _status(["p1.1"], ["p1.0"]),
                             "b2": _status(["p1.1"], ["p1.0"])})
    assert "do not cover the whole key space" in str(report["problem"])
    assert report["missing"] == [{"pid": "p1.0", "quarantined_on": ["b1", "b2"]}]
    assert restorable(cmap, report["missing"][0]).name == "rg0"  # type: ignore[union-attr]


def test_a_lost_partition_only_some_members_hold_is_not_restored_automatically() -> None:
    cmap = ClusterMap.of([_rg("rg0", {"p1.1": "active"}, ("b1", "b2"))])
    report = diagnose(cmap, {"b1": _status(["p1.1"], ["p1.0"]), "b2": _status(["p1.1"])})
    assert restorable(cmap, report["missing"][0]) is None


def test_a_listed_partition_no_member_holds_is_reported() -> None:
    cmap = ClusterMap.of([_rg("rg0", {"p0.0": "active"}, ("b1", "b2"))])
    report = diagnose(cmap, {"b1": _status([]), "b2": _status([])})
    assert report["problem"] is None
    assert report["unheld"] == [{"pid": "p0.0", "rg": "rg0"}]


def test_a_quarantined_replica_the_map_still_covers_is_not_missing() -> None:
    cmap = ClusterMap.of([_rg("rg0", {"p1.0": "active", "p1.1": "active"}, ("b1",))])
    report = diagnose(cmap, {"b1": _status(["p1.0", "p1.1"], ["p2.0"])})
    assert report["missing"] == [] and len(report["quarantined"]) == 1
