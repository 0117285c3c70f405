"""DR tags on a primary brick (``bricks/drtags.py``, DESIGN §12): what the follower
reports becomes the partition's tag, and a YES vote on an attached primary carries the
time it was recorded and the tag."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from dds.changepos import Position
from dds.drmsgs import DrTags
from dds.errors import InvalidRequest, ReplayRefused
from dds.metrics import BRICK, Metrics
from dds.partition import PartitionId
from dds.records import DRRecord

from dds.bricks.drtags import DrTagStore
from dds.bricks.locks import LockTable
from dds.bricks.mapstate import MapState
from dds.bricks.participant import Participant
from dds.bricks.storage import Storage

P = PartitionId(1, 0)
LINEAGE = "ab" * 16


def position(safe_s: float, lsn: int = 5, pid: PartitionId = P) -> str:
    return Position(pid, LINEAGE, lsn, safe_s).encode()


def store(tmp_path: Path, site: str = "dds://dr:1/east-dr") -> tuple[DrTagStore, Clock]:
    maps = MapState("b1", tmp_path, Metrics(BRICK, None))
    if site:
        maps.merge([DRRecord(1, "primary", 0, "", site)], source="test")
    clock = Clock()
    clock.advance(1000)
    return DrTagStore(maps, clock), clock


def vote(p: Participant, clock: Clock, txid: tuple[int, int], op: str = "put",
         value: bytes | None = b"v", expected: int | None = None) -> Any:
    out = p.vote(txid, (1, 1), P, b"k", op, value, expected, 1000, lambda: None)
    if isinstance(out, Deferred):
        results: list[Any] = []
        out.addBoth(results.append)
        clock.advance(0)
        assert results, "the vote did not finish"
        if isinstance(results[0], Exception) or hasattr(results[0], "raiseException"):
            results[0].raiseException()
        return results[0]
    return out


def participant(tmp_path: Path, clock: Clock, tags: DrTagStore) -> Participant:
    storage = Storage(tmp_path / "data", clock, durability="memory")
    storage.open_partition(str(P))
    p = Participant(storage, LockTable(clock), clock, Metrics(BRICK, None),
                    lock_wait_s=1.0, txn_deadline_s=5.0)
    p.dr_tags = tags
    return p


def test_a_followers_report_becomes_the_partitions_tag(tmp_path: Path) -> None:
    tags, _ = store(tmp_path)
    tags.record(P, position(990.5), "b2")
    assert tags.tag(str(P)) == ["b2", 990500]
    assert tags.read(DrTags(pids=(str(P), "p1.1")))["tags"] == {
        str(P): ["b2", 990500, position(990.5)]}


def test_a_tag_does_not_go_back_for_the_same_maker(tmp_path: Path) -> None:
    tags, _ = store(tmp_path)
    tags.record(P, position(990.5), "b2")
    tags.record(P, position(980.0), "b2")
    assert tags.tag(str(P)) == ["b2", 990500]


def test_a_report_for_another_partition_is_refused(tmp_path: Path) -> None:
    tags, _ = store(tmp_path)
    with pytest.raises(InvalidRequest, match="one of p1.1, not of p1.0"):
        tags.record(P, position(990.5, pid=PartitionId(1, 1)), "b2")


def test_a_vote_on_an_attached_primary_carries_its_time_and_the_tag(tmp_path: Path) -> None:
    tags, clock = store(tmp_path)
    tags.record(P, position(990.5), "b2")
    reply = vote(participant(tmp_path, clock, tags), clock, (1, 1))
    assert reply == {"version": 0, "at": 1_000_000, "dr": ["b2", 990500]}


def test_a_vote_without_a_dr_site_carries_only_the_version(tmp_path: Path) -> None:
    tags, clock = store(tmp_path, site="")
    reply = vote(participant(tmp_path, clock, tags), clock, (1, 1))
    assert reply == {"version": 0}


def test_a_replay_is_voted_at_its_own_version(tmp_path: Path) -> None:
    tags, clock = store(tmp_path, site="")
    p = participant(tmp_path, clock, tags)
    assert vote(p, clock, (1, 1), op="replay", expected=7) == {"version": 6}
    assert p.active[(1, 1)].new_version == 7


def test_a_replay_of_a_version_the_replica_holds_is_refused(tmp_path: Path) -> None:
    tags, clock = store(tmp_path, site="")
    p = participant(tmp_path, clock, tags)
    p.storage.write(str(P), b"k", b"newer", 7)
    clock.advance(0)
    with pytest.raises(ReplayRefused) as e:
        vote(p, clock, (1, 1), op="replay", expected=7)
    assert e.value.data == {"version": 7, "reason": "newer"}
    assert len(p.locks) == 0 and p.active == {}


def test_tags_reported_for_another_dr_site_are_dropped(tmp_path: Path) -> None:
    tags, _ = store(tmp_path)
    tags.record(P, position(990.5), "b2")
    tags.maps.merge([DRRecord(2, "primary", 0, "", "dds://other:1/west-dr")], source="test")
    assert tags.tag(str(P)) is None
    assert tags.read(DrTags())["tags"] == {}


def test_a_detached_primary_keeps_the_tags_of_its_last_site(tmp_path: Path) -> None:
    tags, _ = store(tmp_path)
    tags.record(P, position(990.5), "b2")
    tags.maps.merge([DRRecord(2, "primary", 0, "", "")], source="test")
    assert tags.read(DrTags())["tags"] == {str(P): ["b2", 990500, position(990.5)]}
