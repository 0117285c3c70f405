"""The client journal (``lib/drjournal.py``, DESIGN §12): the tag rule, the bounds, the
file."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from dds.errors import InvalidRequest, JournalFull
from dds.lib.drjournal import ENTRY_OVERHEAD, DrJournal, entry_size
from dds.lib.drjournalfile import MAGIC
from dds.metricdefs import CLIENT
from dds.metrics import Metrics
from dds.partition import PartitionId

P = PartitionId(1, 0)
K = [b"k%d" % i for i in range(40)]
KEYS_OF_P = [k for k in K if P.owns(k)]


def add(j: DrJournal, key: bytes, version: int = 1, at: dict[str, int] | None = None,
        pid: PartitionId = P, value: bytes | None = b"v") -> object:
    return j.add(pid, key, "put" if value is not None else "remove", value, version,
                 at if at is not None else {"b1": 1000, "b2": 1005}, 2000)


# -- the tag rule ----------------------------------------------------------------------------

def test_a_tag_of_a_voter_covers_an_entry_whose_vote_it_passed() -> None:
    j = DrJournal(skew_ms=1000)
    add(j, KEYS_OF_P[0], at={"b1": 1000, "b2": 1005})
    assert j.tag(P, "b1", 1000) == 0            # not after the vote: not covered
    assert len(j) == 1
    assert j.tag(P, "b1", 1001) == 1
    assert len(j) == 0


def test_a_tag_of_a_maker_that_did_not_vote_covers_only_past_the_skew() -> None:
    j = DrJournal(skew_ms=1000)
    add(j, KEYS_OF_P[0], at={"b1": 1000, "b2": 1005})
    assert j.tag(P, "b9", 2005) == 0            # max(at) + skew: not yet
    assert j.tag(P, "b9", 2006) == 1


def test_a_voters_tag_uses_its_own_vote_time_not_the_latest() -> None:
    j = DrJournal(skew_ms=1000)
    add(j, KEYS_OF_P[0], at={"b1": 1000, "b2": 5000})
    assert j.tag(P, "b2", 4999) == 0            # b2 voted at 5000: b2's tag must pass it
    assert j.tag(P, "b1", 1001) == 1


def test_a_tag_covers_entries_of_its_partitions_keys_only() -> None:
    j = DrJournal()
    other = PartitionId(1, 1)
    mine = KEYS_OF_P[0]
    theirs = next(k for k in K if other.owns(k))
    add(j, mine)
    add(j, theirs, pid=other)
    assert j.tag(P, "b1", 10_000) == 1
    assert [e.key for e in j] == [theirs]


def test_a_tag_of_a_child_partition_covers_the_parents_entries_of_its_keys() -> None:
    j = DrJournal()
    child = P.children()[0]
    inside = next(k for k in KEYS_OF_P if child.owns(k))
    outside = next(k for k in KEYS_OF_P if not child.owns(k))
    add(j, inside)
    add(j, outside)
    assert j.tag(child, "b1", 10_000) == 1      # recorded under p1.0, tagged on p2.0
    assert [e.key for e in j] == [outside]


def test_a_tag_no_newer_than_one_seen_from_its_maker_changes_nothing() -> None:
    j = DrJournal()
    assert j.tag(P, "b1", 900) == 0
    add(j, KEYS_OF_P[0], at={"b1": 1000})
    assert j.tag(P, "b1", 900) == 0
    assert j.tag(P, "b1", 1001) == 1


def test_an_entry_a_seen_tag_already_covers_is_not_kept() -> None:
    j = DrJournal()
    j.tag(P, "b1", 5000)
    assert add(j, KEYS_OF_P[0], at={"b1": 1000}) is None
    assert len(j) == 0


def test_a_newer_write_of_a_key_supersedes_its_entry() -> None:
    j = DrJournal()
    add(j, KEYS_OF_P[0], version=3)
    add(j, KEYS_OF_P[0], version=4)
    assert [(e.key, e.version) for e in j] == [(KEYS_OF_P[0], 4)]
    assert j.bytes == entry_size(KEYS_OF_P[0], b"v")


# -- bounds ------------------------------------------------------------------------------

def test_reservations_stop_at_the_entry_bound() -> None:
    j = DrJournal(max_entries=2)
    add(j, KEYS_OF_P[0])
    assert j.reserve(10)
    assert not j.reserve(10)                    # one entry and one reservation: full
    j.release(10)
    assert j.reserve(10)


def test_reservations_stop_at_the_byte_bound() -> None:
    j = DrJournal(max_bytes=2 * ENTRY_OVERHEAD + 10)
    add(j, KEYS_OF_P[0], value=b"x" * 5)        # 2 + 5 + overhead bytes
    assert not j.reserve(ENTRY_OVERHEAD + 4)
    assert j.reserve(ENTRY_OVERHEAD + 3)


def test_room_fires_when_entries_leave() -> None:
    j = DrJournal(max_entries=1)
    add(j, KEYS_OF_P[0], at={"b1": 1000})
    assert not j.reserve(10)
    fired: list[object] = []
    j.room().addCallback(fired.append)
    assert fired == []
    j.tag(P, "b1", 2000)
    assert fired == [None] and j.reserve(10)


def test_the_full_error_names_the_bounds_and_says_nothing_was_applied() -> None:
    j = DrJournal(max_entries=7, max_bytes=9999)
    e = j.full_error(waited=False)
    assert isinstance(e, JournalFull) and e.retryable
    assert "max 7 entries, 9999 bytes" in e.message
    assert "nothing was applied" in e.message


@pytest.mark.parametrize("option, value", [("max_entries", 0), ("max_bytes", 10),
                                           ("when_full", "drop"), ("skew_ms", -1)])
def test_bad_journal_options_are_refused_by_name(option: str, value: object) -> None:
    with pytest.raises(InvalidRequest, match=option.replace("skew_ms", "dr_max_skew_ms")):
        DrJournal(**{option: value})  # type: ignore[arg-type]


# -- metrics -----------------------------------------------------------------------------

def test_the_gauges_sum_the_journals_sharing_a_registry() -> None:
    registry = CollectorRegistry()
    a = DrJournal(metrics=Metrics(CLIENT, registry))
    b = DrJournal(metrics=Metrics(CLIENT, registry))
    add(a, KEYS_OF_P[0])
    add(b, KEYS_OF_P[1])
    add(b, KEYS_OF_P[2])
    m = Metrics(CLIENT, registry)
    assert m.value("dr_journal_entries") == 3
    assert m.value("dr_journal_bytes") == a.bytes + b.bytes


def test_covered_and_full_are_counted() -> None:
    metrics = Metrics(CLIENT, None)
    j = DrJournal(metrics=metrics)
    add(j, KEYS_OF_P[0], at={"b1": 1})
    add(j, KEYS_OF_P[1], at={"b1": 1})
    j.tag(P, "b1", 2)
    j.full_error(waited=True)
    assert metrics.value("dr_journal_covered_total") == 2
    assert metrics.value("dr_journal_full_total") == 1


# -- the file ----------------------------------------------------------------------------

def test_a_reopened_journal_file_holds_the_entries_not_covered(tmp_path: Path) -> None:
    path = tmp_path / "j"
    j = DrJournal(path=path)
    add(j, KEYS_OF_P[0], at={"b1": 1000})
    add(j, KEYS_OF_P[1], at={"b1": 3000}, value=None)
    j.tag(P, "b1", 2000)
    j.close()
    again = DrJournal(path=path)
    assert [(e.key, e.op, e.value, e.at) for e in again] == [
        (KEYS_OF_P[1], "remove", None, {"b1": 3000})]
    assert again.engaged
    add(again, KEYS_OF_P[2])                    # numbering goes on after the reload
    assert [e.seq for e in again] == [2, 3]


def test_a_damaged_record_is_named_and_skipped_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "j"
    j = DrJournal(path=path)
    for k in KEYS_OF_P[:3]:
        add(j, k, value=b"value-of-" + k)
    j.close()
    data = bytearray(path.read_bytes())
    second = data.index(MAGIC, 1)
    data[second + 20] ^= 0xFF                   # a flipped bit in the second record
    path.write_bytes(bytes(data))
    again = DrJournal(path=path)
    assert [e.key for e in again] == [KEYS_OF_P[0], KEYS_OF_P[2]]
    assert again.loaded is not None
    assert again.loaded.damaged == ((second, "checksum mismatch"),)
    again.close()
    assert DrJournal(path=path).loaded.damaged == ()    # reported once: compacted


def test_an_incomplete_last_record_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "j"
    j = DrJournal(path=path)
    add(j, KEYS_OF_P[0])
    add(j, KEYS_OF_P[1])
    j.close()
    path.write_bytes(path.read_bytes()[:-3])    # killed in the middle of an append
    again = DrJournal(path=path)
    assert [e.key for e in again] == [KEYS_OF_P[0]]
    assert again.loaded is not None and again.loaded.torn is not None
    assert again.loaded.damaged == ()


def test_the_file_is_compacted_once_most_entries_are_covered(tmp_path: Path) -> None:
    path = tmp_path / "j"
    j = DrJournal(path=path)
    for i in range(3000):
        j.add(P, b"key-%d" % i, "put", b"v", 1, {"b1": 1000}, 0)
    j.add(P, b"last", "put", b"v", 1, {"b1": 9000}, 0)
    big = path.stat().st_size
    assert j.tag(P, "b1", 2000) == 3000          # 3000 adds, their drops: compacted
    assert path.stat().st_size < big / 100
    j.close()
    assert [e.key for e in DrJournal(path=path)] == [b"last"]


def test_a_journal_file_in_a_missing_directory_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="dr_journal_path .*cannot use the file"):
        DrJournal(path=tmp_path / "missing" / "journal")
