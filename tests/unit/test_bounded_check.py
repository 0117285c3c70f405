"""The bounded-staleness checker (``tests.verify.bounded``) on hand-made histories."""

from __future__ import annotations

from tests.verify.bounded import check_bounded_reads
from tests.verify.history import Op


def w(version: int, value: bytes, invoke: float, complete: float) -> Op:
    return Op(0, "put", b"k", value, None, invoke, complete, "ok", None, version, None)


def bget(version: int, value: bytes | None, invoke: float, complete: float,
         bound_ms: int = 500) -> Op:
    return Op(1, "bget", b"k", None, bound_ms, invoke, complete, "ok", value, version, None)


def test_a_read_of_a_version_current_within_the_bound_passes() -> None:
    ops = [w(1, b"a", 0.0, 0.1), w(2, b"b", 1.0, 1.1), bget(1, b"a", 1.5, 1.6)]
    assert check_bounded_reads(ops).ok       # v2 acked at 1.1, within 0.5 s of 1.5


def test_a_read_of_a_version_overwritten_before_the_window_is_flagged() -> None:
    ops = [w(1, b"a", 0.0, 0.1), w(2, b"b", 1.0, 1.1), bget(1, b"a", 2.0, 2.1)]
    result = check_bounded_reads(ops)
    assert not result.ok and result.violations[0].kind == "too_stale"


def test_a_value_that_was_never_written_at_that_version_is_flagged() -> None:
    ops = [w(1, b"a", 0.0, 0.1), bget(1, b"zzz", 0.2, 0.3)]
    assert [v.kind for v in check_bounded_reads(ops).violations] == ["wrong_value"]


def test_a_version_written_only_after_the_read_is_flagged() -> None:
    ops = [bget(1, b"a", 0.0, 0.1), w(1, b"a", 0.5, 0.6)]
    assert [v.kind for v in check_bounded_reads(ops).violations] == ["from_the_future"]


def test_linearizable_reads_are_not_its_business() -> None:
    stale_get = Op(1, "get", b"k", None, None, 2.0, 2.1, "ok", b"a", 1, None)
    assert check_bounded_reads([w(1, b"a", 0, 0.1), w(2, b"b", 1, 1.1), stale_get]).ok
