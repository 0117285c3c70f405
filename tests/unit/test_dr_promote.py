"""``dds-admin dr promote``'s steps without a cluster (``tools/dr/promoteplan.py``,
``tools/dr/agree.py``, ``tools/dr/promote.py``): the newest version of each key wins,
cut-offs from marks, the loss window, the replay counts, and the refusals."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner
from twisted.internet.defer import Deferred

from dds.drmsgs import DrApply
from dds.maps import ClusterMap
from dds.messages import Get, RangeChecksums, RangeKeys
from dds.partition import PartitionId
from dds.records import DRRecord, Member, PartitionEntry, RGRecord

from dds.tools.admin import main
from dds.tools.dr.agree import agree_partition
from dds.tools.dr.promote import _follower
from dds.tools.dr.promoteplan import (Fix, cutoffs, loss_window_ms, newest_fixes,
                                      partition_marks, replays)
from dds.tools.runner import AdminError


# -- (a) the newest version of each key wins ------------------------------------------------

def test_the_newest_version_is_copied_to_every_member_behind_or_lacking_it() -> None:
    fixes, divergent = newest_fixes({
        "b1": [[b"k", 3, 33]], "b2": [[b"k", 2, 22]], "b3": []})
    assert fixes == [Fix(b"k", 3, "b1", ("b2", "b3"))]
    assert divergent == []


def test_a_removal_at_the_newest_version_wins_too() -> None:
    fixes, _ = newest_fixes({"b1": [[b"k", 4, None]], "b2": [[b"k", 3, 7]]})
    assert fixes == [Fix(b"k", 4, "b1", ("b2",))]


def test_members_that_agree_need_no_copy() -> None:
    assert newest_fixes({"b1": [[b"k", 2, 5]], "b2": [[b"k", 2, 5]]}) == ([], [])


def test_the_same_version_with_different_values_is_divergent_and_left_alone() -> None:
    fixes, divergent = newest_fixes({"b1": [[b"k", 2, 5]], "b2": [[b"k", 2, 6]],
                                     "b3": [[b"k", 1, 1]]})
    assert fixes == [] and divergent == [b"k"]


# -- (b) cut-offs ----------------------------------------------------------------------------

def test_a_dr_partition_holds_the_newest_mark_of_its_replicas() -> None:
    replies = {"b1": {"p1.0": {"p2.0": ["pos", 100]}},
               "b2": {"p1.0": {"p2.0": ["pos", 300], "p2.2": ["pos", 50]}},
               "b3": {"p1.0": {}}}
    assert partition_marks(replies, {"p1.0": ["b1", "b2", "b3"]}) == {
        "p1.0": {"p2.0": 300, "p2.2": 50}}


def test_a_primary_partitions_cut_off_is_the_oldest_of_the_dr_partitions_it_spans() -> None:
    # DR site split finer than the primary: p1.0 of the primary spans p2.0 and p2.2.
    marks = {"p2.0": {"p1.0": 500, "p1.1": 900}, "p2.2": {"p1.0": 400},
             "p2.1": {"p1.1": 700}, "p2.3": {"p1.1": 800}}
    assert cutoffs(marks) == {"p1.0": 400, "p1.1": 700}


def test_a_dr_partition_without_a_mark_leaves_the_cut_off_unknown() -> None:
    # The primary's p0.0 spans both DR partitions; p1.1 never got a mark for it.
    assert cutoffs({"p1.0": {"p0.0": 5}, "p1.1": {}}) == {"p0.0": None}


def test_only_the_dr_partitions_overlapping_a_primary_partition_count() -> None:
    # The primary's p2.0 lies in the DR site's p1.0 alone: p1.1's lack of marks is moot.
    assert cutoffs({"p1.0": {"p2.0": 500}, "p1.1": {}}) == {"p2.0": 500}


def test_the_loss_window_runs_from_the_oldest_cut_off_to_the_promotion() -> None:
    assert loss_window_ms({"p1.0": 400, "p1.1": 700}, 1000) == 600
    assert loss_window_ms({"p1.0": None, "p1.1": 700}, 1000) is None
    assert loss_window_ms({}, 1000) is None


# -- (d) replays -----------------------------------------------------------------------------

def test_replays_count_each_rg_once_by_its_largest_member_count() -> None:
    applied = 'dr_replays_total{outcome="applied"}'
    newer = 'dr_replays_total{outcome="newer"}'
    metrics = {"b1": {applied: 5, newer: 1}, "b2": {applied: 5, newer: 1},
               "b3": {applied: 4}, "b4": {applied: 2}}
    out = replays(metrics, {"rg0": ["b1", "b2", "b3"], "rg1": ["b4", "b5"]})
    assert out == {"applied": 7, "newer": 1, "window_closed": 0, "not_promoted": 0}


# -- refusals --------------------------------------------------------------------------------

@pytest.mark.parametrize("record, says", [
    (None, "has no DR record"),
    (DRRecord(1, "primary", 0, "", "dds://x:1/y"), "is a primary"),
    (DRRecord(3, "primary", 2, "east"), "promoted at epoch 2"),
])
def test_only_a_follower_is_promoted(record: DRRecord | None, says: str) -> None:
    cmap = ClusterMap.of([record] if record is not None else [])
    with pytest.raises(AdminError, match=says):
        _follower(cmap, {})


def test_the_newest_dr_record_of_any_brick_decides() -> None:
    older = ClusterMap.of([DRRecord(1, "follower", 0, "east")])
    newer = ClusterMap.of([DRRecord(2, "primary", 1, "east")])
    with pytest.raises(AdminError, match="promoted at epoch 1"):
        _follower(older, {"b2": newer})


def test_promote_without_yes_is_refused_before_any_connection(monkeypatch: Any) -> None:
    monkeypatch.setenv("DDS_ADMIN_SECRET", "x" * 40)
    result = CliRunner().invoke(main, ["dr", "promote", "--seeds", "127.0.0.1:9"])
    assert result.exit_code == 1
    assert "without --yes" in result.output


# -- (a) on the wire, with a stand-in for the bricks ------------------------------------------

class FakeCalls:
    """``BrickCaller.send`` answering from replicas held in dicts."""

    def __init__(self, replicas: dict[str, dict[bytes, tuple[bytes | None, int]]]) -> None:
        self.replicas = replicas
        self.applied: list[tuple[str, list[Any]]] = []

    def send(self, brick: str, msg: Any, timeout: float | None = None) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._answer(brick, msg))

    async def _answer(self, brick: str, msg: Any) -> Any:
        held = self.replicas[brick]
        if isinstance(msg, RangeChecksums):
            buckets = [[0, 0] for _ in range(msg.buckets)]
            for key, (value, version) in held.items():
                b = buckets[hash(key) % msg.buckets]
                b[0] += 1
                b[1] ^= hash((key, value, version)) & 0xFFFFFFFF
            return {"buckets": buckets}
        if isinstance(msg, RangeKeys):
            return {"keys": [[k, v, None if val is None else hash(val) & 0xFFFF]
                             for k, (val, v) in sorted(held.items())
                             if hash(k) % msg.buckets == msg.bucket]}
        if isinstance(msg, Get):
            value, version = held.get(msg.key, (None, 0))
            return {"value": value, "version": version}
        if isinstance(msg, DrApply):
            self.applied.append((brick, list(msg.rows)))
            n = 0
            for key, value, version in msg.rows:
                if held.get(key, (None, 0))[1] < version:
                    held[key] = (value, version)
                    n += 1
            return {"applied": n, "skipped": len(msg.rows) - n}
        raise AssertionError(msg)


def test_agreement_copies_newer_rows_to_the_members_behind_with_dr_apply() -> None:
    calls = FakeCalls({"b1": {b"a": (b"1", 1), b"b": (b"2", 2)},
                       "b2": {b"a": (b"1", 1), b"b": (b"old", 1)},
                       "b3": {b"a": (b"1", 1)}})
    rec = RGRecord("rg0", 3, [Member("b1", "active"), Member("b2", "active"),
                              Member("b3", "active")],
                   [PartitionEntry(PartitionId(0, 0), "active")])
    d = Deferred.fromCoroutine(agree_partition(calls, PartitionId(0, 0), rec))  # type: ignore
    out: list[Any] = []
    d.addBoth(out.append)
    result = out[0]
    assert result.keys_copied == 1 and result.rows_written == 2
    assert sorted(b for b, _ in calls.applied) == ["b2", "b3"]
    assert all(r[b"b"] == (b"2", 2) for r in calls.replicas.values())
