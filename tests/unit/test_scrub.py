"""Unit tests of scrub: the brick side (dds.bricks.scrub: buckets, checksums, the
snapshot scan, the handlers) on real SQLite files in tmp_path with time from a Clock, and
the admin side's pure parts (dds.tools.scrub: key differences, majority, fix plan,
rendering)."""

from __future__ import annotations

import io
import random
import sqlite3
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import xxhash
from rich.console import Console
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock

from dds.bricks import scrub as brick_scrub
from dds.bricks.scrub import (MASK64, Scrubber, bucket_of, file_checksums, file_keys,
                              key_bucket, row_hash)
from dds.bricks.storage import Storage
from dds.errors import InvalidRequest, NotServing, Refused
from dds.maps import ClusterMap
from dds.messages import Message, RangeChecksums, RangeKeys
from dds.partition import PartitionId
from dds.records import Member, PartitionEntry, RGRecord
from dds.tools import scrub as admin_scrub
from dds.tools.scrub import (KeyDiff, PartitionResult, agreement, diff_keys,
                             differing_buckets, fix_plan)

PID = PartitionId(1, 1)     # owns the keys whose hash is odd
NAME = str(PID)


def inline(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    return maybeDeferred(f, *args)


def result_of(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that completes without waiting (inline threads, no timers)."""
    out: list[Any] = []
    Deferred.fromCoroutine(coro).addBoth(out.append)
    assert out, "the coroutine did not complete"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def keys_of(pid: PartitionId, n: int, seed: int = 1) -> list[bytes]:
    """``n`` distinct keys that ``pid`` owns."""
    rng = random.Random(seed)
    out: list[bytes] = []
    while len(out) < n:
        key = b"key-%d" % rng.getrandbits(48)
        if pid.owns(key) and key not in out:
            out.append(key)
    return out


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_storage(path: Path, clock: Clock) -> Storage:
    s = Storage(path, clock)
    s.open_partition(NAME)
    return s


@pytest.fixture
def storage(tmp_path: Path, clock: Clock) -> Iterator[Storage]:
    s = make_storage(tmp_path / "a", clock)
    yield s
    s.close()


@pytest.fixture
def other(tmp_path: Path, clock: Clock) -> Iterator[Storage]:
    s = make_storage(tmp_path / "b", clock)
    yield s
    s.close()


def sums(storage: Storage, buckets: int = 16) -> dict[str, Any]:
    return file_checksums(storage.partition_path(NAME), NAME, PID.depth, buckets)


def write_all(storage: Storage, clock: Clock,
              rows: list[tuple[bytes, bytes | None, int]]) -> None:
    for key, value, version in rows:
        storage.write(NAME, key, value, version)
    clock.advance(0)


def edit(storage: Storage, sql: str, *args: Any) -> None:
    """Change the file behind the store's back (what a disk error or a bug would do)."""
    conn = sqlite3.connect(str(storage.partition_path(NAME)))
    conn.execute(sql, args)
    conn.commit()
    conn.close()


# -- buckets -----------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [0, 1, 5, 31, 32])
@pytest.mark.parametrize("buckets", [1, 2, 3, 7, 64, 1000, 65536])
def test_every_hash_falls_in_one_bucket_in_range(depth: int, buckets: int) -> None:
    rng = random.Random(depth * 100003 + buckets)
    hashes = [rng.getrandbits(64) for _ in range(2000)] + [0, MASK64, 1 << 63]
    for h in hashes:
        b = bucket_of(h, depth, buckets)
        assert 0 <= b < buckets
        # Buckets nest: bucket i of n is buckets i*m .. i*m+m-1 of n*m.
        for m in (2, 3):
            assert bucket_of(h, depth, buckets * m) // m == b
    top = (MASK64 >> depth) << depth        # the largest hash bits above the prefix
    assert bucket_of(top, depth, buckets) == buckets - 1
    assert bucket_of(0, depth, buckets) == 0


def test_buckets_split_a_partition_evenly() -> None:
    counts = [0] * 16
    for key in keys_of(PID, 16000):
        counts[key_bucket(key, PID.depth, 16)] += 1
    assert min(counts) > 800 and max(counts) < 1200, counts


def test_each_key_is_listed_in_exactly_one_bucket(storage: Storage, clock: Clock) -> None:
    keys = keys_of(PID, 500)
    write_all(storage, clock, [(k, b"v" + k, 1) for k in keys[:450]]
              + [(k, None, 1) for k in keys[450:]])
    path = storage.partition_path(NAME)
    for buckets in (1, 7, 64):
        listed = [entry[0] for b in range(buckets)
                  for entry in file_keys(path, NAME, PID.depth, b, buckets, 1 << 30)]
        assert sorted(listed) == sorted(keys)
        counted = sum(n for n, _ in sums(storage, buckets)["buckets"])
        assert counted == len(keys)


# -- checksums ---------------------------------------------------------------------------

def test_row_hash_is_the_whole_partition_checksum_of_one_row(storage: Storage,
                                                             clock: Clock) -> None:
    key = keys_of(PID, 1)[0]
    write_all(storage, clock, [(key, b"value", 3)])
    assert row_hash(key, b"value", 3) == storage.open_partition(NAME).checksum()
    write_all(storage, clock, [(key, None, 4)])
    assert row_hash(key, None, 4) == storage.open_partition(NAME).checksum()


def test_equal_content_has_equal_checksums_in_any_insertion_order(
        storage: Storage, other: Storage, clock: Clock) -> None:
    keys = keys_of(PID, 300)
    final = [(k, None if i % 10 == 0 else b"value-%d" % i, 1 + i % 3)
             for i, k in enumerate(keys)]
    # One replica writes each final row at once; the other in reverse order, through
    # earlier versions, so its lsns and its table order differ.
    write_all(storage, clock, final)
    for key, value, version in reversed(final):
        for v in range(1, version):
            write_all(other, clock, [(key, b"old", v)])
        write_all(other, clock, [(key, value, version)])
    a, b = sums(storage), sums(other)
    assert a["buckets"] == b["buckets"]
    assert a["lsn"] != b["lsn"]             # lsns are local: not part of the checksum
    assert a["rows"] == b["rows"] == 300


@pytest.mark.parametrize("change", ["value", "version", "tombstone", "extra tombstone",
                                    "missing"])
def test_a_changed_row_changes_its_bucket_only(storage: Storage, other: Storage,
                                               clock: Clock, change: str) -> None:
    keys = keys_of(PID, 200)
    rows: list[tuple[bytes, bytes | None, int]] = [(k, b"v-%d" % i, 2)
                                                   for i, k in enumerate(keys)]
    write_all(storage, clock, rows)
    write_all(other, clock, rows)
    victim = keys[17]
    if change == "value":           # same version, different value: divergence
        edit(other, "UPDATE kv SET value = ? WHERE key = ?", b"tampered", victim)
    elif change == "version":
        edit(other, "UPDATE kv SET version = 3 WHERE key = ?", victim)
    elif change == "tombstone":     # same version, removed on one replica
        edit(other, "UPDATE kv SET value = NULL WHERE key = ?", victim)
    elif change == "extra tombstone":
        victim = keys_of(PID, 201)[200]
        write_all(other, clock, [(victim, None, 1)])
    else:
        edit(other, "DELETE FROM kv WHERE key = ?", victim)
    buckets = 16
    a, b = sums(storage, buckets), sums(other, buckets)
    bucket = key_bucket(victim, PID.depth, buckets)
    assert differing_buckets({"a": a["buckets"], "b": b["buckets"]}) == [bucket]
    path_a, path_b = storage.partition_path(NAME), other.partition_path(NAME)
    found = diff_keys({"a": file_keys(path_a, NAME, PID.depth, bucket, buckets, 1 << 30),
                       "b": file_keys(path_b, NAME, PID.depth, bucket, buckets, 1 << 30)},
                      bucket)
    assert [k.key for k in found] == [victim]
    assert found[0].divergent == (change in ("value", "tombstone"))


def test_the_scan_reads_one_consistent_snapshot(storage: Storage, clock: Clock,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    keys = keys_of(PID, 100)
    write_all(storage, clock, [(k, b"before", 1) for k in keys[:90]])
    before = sums(storage)
    real_rows = brick_scrub._rows

    def rows_with_writes(conn: sqlite3.Connection) -> Iterator[Any]:
        for i, row in enumerate(real_rows(conn)):
            if i == 1:
                # Commits on the brick's own connection while the scan is under way:
                # new keys (appended to the table), overwrites of rows not yet scanned,
                # a removal.
                write_all(storage, clock, [(k, b"during", 1) for k in keys[90:]]
                          + [(k, b"after", 2) for k in keys[50:60]]
                          + [(keys[80], None, 2)])
            yield row
    monkeypatch.setattr(brick_scrub, "_rows", rows_with_writes)
    during = sums(storage)
    monkeypatch.setattr(brick_scrub, "_rows", real_rows)
    assert during == before                  # rows, counts and lsn of the same state
    after = sums(storage)
    assert after["rows"] == 100 and after["lsn"] > before["lsn"]
    assert after["buckets"] != before["buckets"]


# -- the handlers --------------------------------------------------------------------------

def test_range_checksums_covers_staged_writes(storage: Storage, clock: Clock) -> None:
    scrubber = Scrubber("b1", storage, inline)
    keys = keys_of(PID, 20)
    write_all(storage, clock, [(k, b"v", 1) for k in keys[:10]])
    for k in keys[10:]:
        storage.write(NAME, k, b"v", 1)     # acknowledged in memory mode, not committed
    reply = result_of(scrubber.range_checksums(RangeChecksums(pid=NAME, buckets=8)))
    assert reply["rows"] == 20 and len(reply["buckets"]) == 8
    assert reply["bytes"] == sum(len(k) + 1 for k in keys)
    reply = result_of(scrubber.range_keys(RangeKeys(pid=NAME, bucket=0, buckets=1)))
    assert [k for k, _v, _h in reply["keys"]] == sorted(keys)
    assert all(v == 1 and h == xxhash.xxh64_intdigest(b"v") for _k, v, h in reply["keys"])


def test_range_handlers_refuse_bad_requests(storage: Storage, clock: Clock) -> None:
    write_all(storage, clock, [(k, b"x" * 10, 1) for k in keys_of(PID, 200)])
    scrubber = Scrubber("b1", storage, inline, max_reply_bytes=2000)
    with pytest.raises(NotServing, match="no replica of p1.0"):
        result_of(scrubber.range_checksums(RangeChecksums(pid="p1.0")))
    with pytest.raises(InvalidRequest, match="bucket 4 is not below buckets 4"):
        result_of(scrubber.range_keys(RangeKeys(pid=NAME, bucket=4, buckets=4)))
    with pytest.raises(Refused, match="ask with more buckets"):
        result_of(scrubber.range_keys(RangeKeys(pid=NAME, bucket=0, buckets=1)))
    small = result_of(scrubber.range_keys(RangeKeys(pid=NAME, bucket=5, buckets=64)))
    assert 0 < len(small["keys"]) < 20


class FakeMaps:
    def __init__(self, cmap: ClusterMap) -> None:
        self.map = cmap


class FakeRecoveries:
    def __init__(self) -> None:
        self.blocked: set[str] = set()


def test_only_a_replica_the_brick_serves_is_summarized(storage: Storage) -> None:
    rec = RGRecord("rg0", 3, [Member("b1"), Member("b2", "recovering")],
                   [PartitionEntry(PID), PartitionEntry(PartitionId(1, 0), "incoming")])
    maps, recoveries = FakeMaps(ClusterMap.of([rec])), FakeRecoveries()
    ask = RangeChecksums(pid=NAME, buckets=4)
    assert result_of(Scrubber("b1", storage, inline, maps, recoveries).range_checksums(ask))
    with pytest.raises(NotServing, match="b2 is recovering in rg0"):
        result_of(Scrubber("b2", storage, inline, maps, recoveries).range_checksums(ask))
    with pytest.raises(NotServing, match="not an active partition"):
        result_of(Scrubber("b1", storage, inline, maps, recoveries).range_checksums(
            RangeChecksums(pid="p1.0")))
    recoveries.blocked.add("rg0")
    with pytest.raises(NotServing, match="re-syncing rg0"):
        result_of(Scrubber("b1", storage, inline, maps, recoveries).range_checksums(ask))


# -- the admin side ------------------------------------------------------------------------

def test_key_differences_tell_divergence_from_missed_writes() -> None:
    listings = {
        "b1": [[b"a", 1, 10], [b"b", 2, 20], [b"c", 3, None], [b"d", 1, 40], [b"e", 1, 5]],
        "b2": [[b"a", 1, 10], [b"b", 2, 21], [b"c", 3, 30], [b"d", 2, 41]],
        "b3": [[b"a", 1, 10], [b"b", 2, 20], [b"c", 3, None], [b"d", 1, 40], [b"e", 1, 5]],
    }
    found = {k.key: k for k in diff_keys(listings, 3)}
    assert sorted(found) == [b"b", b"c", b"d", b"e"]
    assert found[b"b"].divergent and found[b"c"].divergent        # value / tombstone
    assert not found[b"d"].divergent and not found[b"e"].divergent  # versions / absent
    assert found[b"e"].replicas == {"b1": (1, 5), "b2": None, "b3": (1, 5)}
    wire = found[b"c"].to_wire()
    assert wire["key"] == "c" and wire["bucket"] == 3
    assert wire["replicas"]["b1"] == {"version": 3, "tombstone": True, "value_hash": None}
    assert wire["replicas"]["b2"]["value_hash"] == f"{30:016x}"


def test_majority_needs_more_than_half_of_the_members() -> None:
    assert agreement(["b1", "b2", "b3"], {"b1": 1, "b2": 2, "b3": 1}) == (
        [["b1", "b3"], ["b2"]], ["b1", "b3"], ["b2"])
    assert agreement(["b1", "b2", "b3"], {"b1": 1, "b2": 2, "b3": 3})[1:] == (None, [])
    assert agreement(["b1", "b2"], {"b1": 1, "b2": 2})[1:] == (None, [])
    assert agreement(["b1", "b2", "b3", "b4"],
                     {"b1": 1, "b2": 1, "b3": 2, "b4": 2})[1:] == (None, [])
    assert agreement(["b1", "b2", "b3", "b4", "b5"],
                     {"b1": 1, "b2": 2, "b3": 1, "b4": 1, "b5": 3})[1:] == (
        ["b1", "b3", "b4"], ["b2", "b5"])


def _rg(members: list[str], pids: list[PartitionId]) -> RGRecord:
    return RGRecord("rg0", 1, [Member(m) for m in members], [PartitionEntry(p) for p in pids])


def _result(pid: PartitionId, members: list[str], state: str = "clean",
            minority: list[str] | None = None, majority: bool = True) -> PartitionResult:
    minority = minority or []
    r = PartitionResult(pid=str(pid), rg="rg0", members=members, state=state)
    if state == "differing":
        r.majority = [m for m in members if m not in minority] if majority else None
        r.minority = minority if majority else []
        r.groups = [[m] for m in members]
    return r


def test_fix_plan_recopies_the_minority_only_when_it_is_safe() -> None:
    p0, p1 = PartitionId(1, 0), PartitionId(1, 1)
    three = ["b1", "b2", "b3"]
    rec = _rg(three, [p0, p1])
    assert fix_plan(rec, [_result(p0, three, "differing", ["b3"]), _result(p1, three)]) \
        == (["b3"], None)
    # The first member is a minority: it copies from b2, which is fine.
    assert fix_plan(rec, [_result(p0, three, "differing", ["b1"]), _result(p1, three)]) \
        == (["b1"], None)
    # Recovery replaces every partition of the RG: all must have been checked.
    order, why = fix_plan(rec, [_result(p0, three, "differing", ["b3"])])
    assert order == [] and why is not None and "p1.1 of rg0 not checked" in why
    order, why = fix_plan(rec, [_result(p0, three, "differing", majority=False),
                                _result(p1, three)])
    assert order == [] and why is not None and "no majority" in why
    order, why = fix_plan(rec, [_result(p0, three, "differing", ["b3"]),
                                _result(p1, three, "error")])
    assert order == [] and why is not None and "could not be compared" in why
    # b3 bad in one partition, b1 in the other: b1 first (from b2), then b3 (from b1,
    # whole again by then).
    assert fix_plan(rec, [_result(p0, three, "differing", ["b3"]),
                          _result(p1, three, "differing", ["b1"])]) == (["b1", "b3"], None)
    # Each member bad somewhere: whoever goes first copies from a bad replica.
    q0, q1, q2, q3 = (PartitionId(2, i) for i in range(4))
    rec4 = _rg(three, [q0, q1, q2, q3])
    order, why = fix_plan(rec4, [_result(q0, three, "differing", ["b3"]),
                                 _result(q1, three, "differing", ["b1"]),
                                 _result(q2, three, "differing", ["b2"]),
                                 _result(q3, three)])
    assert order == [] and why is not None and "would copy from b2" in why
    five = ["b1", "b2", "b3", "b4", "b5"]
    rec5 = _rg(five, [p0, p1])
    assert fix_plan(rec5, [_result(p0, five, "differing", ["b2", "b4"]),
                           _result(p1, five)]) == (["b2", "b4"], None)
    order, why = fix_plan(rec5, [_result(p0, five, "differing", ["b1", "b2"]),
                                 _result(p1, five)])
    assert order == [] and why is not None and "would copy from b2" in why
    assert fix_plan(rec, [_result(p0, three), _result(p1, three)]) == ([], None)


def test_render_shows_each_differing_key_with_every_replica() -> None:
    r = PartitionResult(pid="p1.1", rg="rg0", members=["b1", "b2", "b3"],
                        state="differing", differing_buckets=[5], listed_buckets=[5],
                        rechecked=[5, 9], settled=[9], keys_total=1, keys_divergent=1,
                        majority=["b1", "b2"], minority=["b3"],
                        groups=[["b1", "b2"], ["b3"]], bytes=1234)
    r.keys = [KeyDiff(b"user:42", 5, {"b1": (2, 0xABCDEF0123456789), "b2": (2, 0xABCDEF0123456789),
                                      "b3": (2, 0x1111111111111111)})]
    options = admin_scrub.Options()
    report = admin_scrub.make_report(options, [r], [], 1.5)
    assert not report["ok"]
    assert (report["partitions_differing"], report["keys_differing"],
            report["keys_divergent"], report["buckets_settled"]) == (1, 1, 1, 1)
    out = io.StringIO()
    admin_scrub.render(report, Console(file=out, width=200, highlight=False))
    text = out.getvalue()
    assert "user:42" in text and "v2 #abcdef01" in text and "v2 #11111111" in text
    assert "diverged" in text and "minority b3" in text
    assert "seen twice, 0.5s apart" in text and "writes in flight" in text
    assert "--fix" in text


# -- the admin side's checking, against scripted bricks -----------------------------------

class ScriptedBricks:
    """Stands in for the admin's connections: ``range_checksums`` answers come from
    ``rounds`` (one dict brick → bucket sums per round), ``range_keys`` from ``keys``
    (brick → (bucket, buckets) → entries); ``too_big`` buckets are refused."""

    def __init__(self, rounds: list[dict[str, list[list[int]]]],
                 keys: dict[str, dict[tuple[int, int], list[list[Any]]]] | None = None,
                 too_big: set[tuple[int, int]] | None = None) -> None:
        self.rounds = rounds
        self.keys = keys or {}
        self.too_big = too_big or set()
        self.asked: list[tuple[str, str, dict[str, Any]]] = []

    async def send(self, brick: str, msg: Message) -> Any:
        mtype, body = msg.TYPE, msg.to_wire()
        self.asked.append((brick, mtype, body))
        if mtype == "range_checksums":
            n = sum(1 for b, m, _ in self.asked if m == mtype and b == brick)
            sums = self.rounds[min(n, len(self.rounds)) - 1][brick]
            return {"buckets": sums, "lsn": 7, "rows": sum(c for c, _ in sums), "bytes": 100}
        where = (body["bucket"], body["buckets"])
        if where in self.too_big:
            raise Refused("ask with more buckets")
        return {"keys": self.keys.get(brick, {}).get(where, [])}

    def close(self) -> None:
        pass


MEMBERS = ["b1", "b2", "b3"]


def run_check(bricks: ScriptedBricks, buckets: int = 4) -> PartitionResult:
    clock = Clock()
    rec = _rg(MEMBERS, [PID])
    run = admin_scrub.Scrub(clock, None, ClusterMap.of([rec]),  # type: ignore[arg-type]
                             admin_scrub.Options(buckets=buckets), admin_scrub.QuietView())
    run.bricks = bricks     # type: ignore[assignment]
    out: list[Any] = []
    Deferred.fromCoroutine(run.check(PID, rec)).addBoth(out.append)
    for _ in range(10):
        clock.advance(admin_scrub.RECHECK_PAUSE_S)
    assert out, "the check did not finish"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    result: PartitionResult = out[0]
    return result


SAME = [[1, 11], [2, 22], [0, 0], [3, 33]]
ODD = [[1, 11], [2, 23], [0, 0], [3, 33]]


def test_a_bucket_that_differs_once_is_checked_again_and_settles() -> None:
    bricks = ScriptedBricks([{"b1": SAME, "b2": SAME, "b3": ODD},
                             {"b1": SAME, "b2": SAME, "b3": SAME}])
    r = run_check(bricks)
    assert (r.state, r.rechecked, r.settled, r.keys) == ("clean", [1], [1], [])
    assert not any(m == "range_keys" for _b, m, _ in bricks.asked)


def test_keys_that_agree_when_listed_settle_too() -> None:
    entries = [[b"k", 2, 5]]
    bricks = ScriptedBricks([{"b1": SAME, "b2": SAME, "b3": ODD}],
                            {m: {(1, 4): entries} for m in MEMBERS})
    r = run_check(bricks)
    assert (r.state, r.settled, r.differing_buckets) == ("clean", [1], [])


def test_a_lasting_difference_names_the_key_and_the_minority() -> None:
    good = [[b"a", 1, 5], [b"k", 2, 5]]
    bricks = ScriptedBricks([{"b1": SAME, "b2": SAME, "b3": ODD}],
                            {"b1": {(2, 8): good}, "b2": {(2, 8): good},
                             "b3": {(2, 8): [[b"a", 1, 5]], (3, 8): [[b"k", 2, 6]]}},
                            too_big={(1, 4)})
    r = run_check(bricks)
    assert (r.state, r.differing_buckets, r.listed_buckets) == ("differing", [1], [1])
    assert [(k.key, k.divergent) for k in r.keys] == [(b"k", True)]
    assert (r.majority, r.minority, r.rows) == (["b1", "b2"], ["b3"],
                                                {m: 6 for m in MEMBERS})
    # The refused bucket was asked as its two halves of 8.
    assert {(b["bucket"], b["buckets"]) for _m, t, b in bricks.asked
            if t == "range_keys"} == {(1, 4), (2, 8), (3, 8)}


def test_an_unreachable_member_leaves_the_partition_unchecked() -> None:
    class Down(ScriptedBricks):
        async def send(self, brick: str, msg: Message) -> Any:
            if brick == "b2":
                raise NotServing("brick b2 is re-syncing rg0")
            return await super().send(brick, msg)
    r = run_check(Down([{"b1": SAME, "b2": SAME, "b3": SAME}]))
    assert r.state == "error"
    assert r.errors == ["b2: range_checksums of p1.1 failed: brick b2 is re-syncing rg0"]
