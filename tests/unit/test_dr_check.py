"""The DR fault run's checker (``tests/faults/drcheck.py``): each rule can fail."""

from __future__ import annotations

from tests.faults.drcheck import Ack, acks_of, check

K = b"k"


def run(acks: list[Ack], final: dict[bytes, tuple[bytes | None, int]],
        killed: set[int] = frozenset(), cut: int | None = 1000):  # type: ignore[assignment]
    return check(acks, set(killed), final, {"p0.0": cut}, lambda key: "p0.0")


def test_a_surviving_write_at_its_version_or_superseded_is_fine() -> None:
    acks = [Ack(1, K, 3, b"x", 500, "primary"), Ack(1, b"j", 2, None, 500, "primary")]
    f = run(acks, {K: (b"other", 4), b"j": (None, 2)})
    assert f.violations == [] and f.acked == 2 and f.lost_killed == 0


def test_a_surviving_write_the_site_lacks_is_a_violation() -> None:
    f = run([Ack(1, K, 3, b"x", 500, "primary")], {K: (b"y", 2)})
    assert len(f.violations) == 1 and "surviving client 1" in f.violations[0]


def test_the_same_version_with_another_value_is_missing() -> None:
    f = run([Ack(1, K, 3, b"x", 500, "primary")], {K: (b"y", 3)})
    assert len(f.violations) == 1


def test_a_killed_clients_write_after_the_cut_off_is_a_counted_loss() -> None:
    f = run([Ack(2, K, 3, b"x", 1500, "primary")], {K: (b"y", 2)}, killed={2})
    assert f.violations == [] and f.lost_killed == 1


def test_a_killed_clients_write_before_the_cut_off_must_be_there() -> None:
    f = run([Ack(2, K, 3, b"x", 900, "primary")], {K: (b"y", 2)}, killed={2})
    assert len(f.violations) == 1 and "before the cut-off" in f.violations[0]


def test_without_a_cut_off_any_loss_of_a_killed_client_is_allowed() -> None:
    f = run([Ack(2, K, 3, b"x", 1, "primary")], {}, killed={2}, cut=None)
    assert f.violations == [] and f.lost_killed == 1


def test_a_version_the_site_gives_again_is_a_violation() -> None:
    acks = [Ack(1, K, 5, b"x", 500, "primary"), Ack(3, K, 5, b"z", 9000, "dr")]
    f = run(acks, {K: (b"z", 5)})
    assert any("went back" in v for v in f.violations)


def test_acks_are_read_from_the_clients_records() -> None:
    lines = [{"t": "invoke", "key": "6b"}, {"t": "ack", "key": "6b", "version": 2,
                                            "value": None, "ms": 7, "site": "dr"}]
    assert acks_of(4, lines) == [Ack(4, K, 2, None, 7, "dr")]
