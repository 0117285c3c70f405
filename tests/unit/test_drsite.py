"""The client's DR side without a cluster (``lib/drsite.py``, ``lib/drreplay.py``): the
journal's full policies (nothing is sent), what a successful tagged write leaves in the
journal, replay outcomes, and the ``dr_site`` option."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger

from dds.errors import (InvalidRequest, JournalFull, NotPrimary, ReplayRefused, Timeout)
from dds.lib.drjournal import DrJournal
from dds.lib.drreplay import outcome_of, replay
from dds.lib.drsite import DrSide, promoted_from, site_options
from dds.lib.routing import Route
from dds.metricdefs import CLIENT
from dds.metrics import Metrics
from dds.partition import PartitionId
from dds.records import BrickRecord, DRRecord, RGRecord

P = PartitionId(0, 0)


class FakeClient:
    """What ``DrSide`` uses of a ``DDSClient``; ``_write_checked`` records what was sent."""

    log = Logger()

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.timeout = 5.0
        self.cluster = "east"
        self.metrics = Metrics(CLIENT, None)
        self.sent: list[tuple[bytes, str, Any, Any]] = []
        self.outcomes: dict[bytes, Any] = {}

    def _write_checked(self, key: bytes, op: str, value: bytes | None,
                       expected: int | None, timeout: float | None) -> Deferred[int]:
        self.sent.append((key, op, value, expected))
        outcome = self.outcomes.get(key, 1)
        return fail(outcome) if isinstance(outcome, BaseException) else succeed(outcome)

    def replay_write(self, key: bytes, value: bytes | None, version: int,
                     timeout: float | None = None) -> Deferred[int]:
        return self._write_checked(key, "replay", value, version, timeout)


def side(max_entries: int = 1, when_full: str = "wait") -> tuple[DrSide, FakeClient]:
    client = FakeClient()
    journal = DrJournal(max_entries=max_entries, when_full=when_full,
                        metrics=client.metrics)
    return DrSide(client, journal, None, "manual"), client  # type: ignore[arg-type]


def fill(s: DrSide) -> None:
    s.journal.add(P, b"old", "put", b"v", 1, {"b1": 1000}, 0)


def outcome(d: Deferred[Any]) -> Any:
    """``d``'s result (a ``Failure`` for an error), or None while it has none yet."""
    box: list[Any] = []

    def keep(result: Any) -> Any:
        box.append(result)
        return result
    d.addBoth(keep)
    if box:
        d.addErrback(lambda _: None)
    return box[0] if box else None


def test_a_full_journal_with_fail_refuses_the_write_at_once_and_sends_nothing() -> None:
    s, client = side(when_full="fail")
    fill(s)
    result = outcome(s.write(b"k", "put", b"v", None, None))
    assert isinstance(result.value, JournalFull)
    assert client.sent == []
    assert client.metrics.value("dr_journal_full_total") == 1


def test_a_full_journal_with_wait_fails_at_the_deadline_and_sends_nothing() -> None:
    s, client = side(when_full="wait")
    fill(s)
    d = s.write(b"k", "put", b"v", None, 2.0)
    client.clock.advance(1.9)
    assert outcome(d) is None and client.sent == []
    client.clock.advance(0.2)
    result = outcome(d)
    assert isinstance(result.value, JournalFull)
    assert "after waiting" in result.value.message
    assert client.sent == []


def test_a_waiting_write_goes_out_once_a_tag_makes_room() -> None:
    s, client = side(when_full="wait")
    fill(s)
    d = s.write(b"k", "put", b"v", None, 2.0)
    client.clock.advance(1.0)
    s.journal.tag(P, "b1", 1001)                 # the old entry is covered
    assert outcome(d) == 1
    assert client.sent == [(b"k", "put", b"v", None)]
    assert s.journal.reserve(10)                 # the reservation was given back


def route() -> Route:
    rg = RGRecord("rg0", 1, [], [])
    bricks = [BrickRecord(b, 1, "127.0.0.1", 7000 + i, b) for i, b in
              enumerate(("b1", "b2", "b3"))]
    return Route(P, rg, bricks)


def test_a_tagged_write_is_kept_with_each_voters_time_and_its_tags_applied() -> None:
    s, _client = side(max_entries=10)
    s.journal.add(P, b"earlier", "put", b"v", 1, {"b1": 500}, 0)
    votes = [{"version": 4, "at": 1000}, {"version": 4, "at": 1002, "dr": ["b1", 600]},
             {"version": 4, "at": 1001}]
    s.on_tagged(route(), {"key": b"k", "op": "put", "value": b"x"}, 5, votes)
    assert [(e.key, e.version, e.value, e.at) for e in s.journal] == [
        (b"k", 5, b"x", {"b1": 1000, "b2": 1002, "b3": 1001})]


def test_replay_outcomes_are_reported_and_failed_entries_stay() -> None:
    s, site = side(max_entries=10)
    j = s.journal
    for i, k in enumerate((b"a", b"b", b"c", b"d")):
        j.add(P, k, "put" if k != b"b" else "remove", None if k == b"b" else b"v",
              10 + i, {"b1": 1}, 0)
    site.outcomes = {b"b": ReplayRefused("newer", {"version": 12, "reason": "newer"}),
                     b"c": ReplayRefused("closed", {"version": None,
                                                    "reason": "window_closed"}),
                     b"d": Timeout("the site did not answer")}
    report = outcome(Deferred.fromCoroutine(replay(site, j, 5.0)))  # type: ignore[arg-type]
    assert report.applied == ((b"a", 10),)
    assert report.refused_newer == ((b"b", 11),)
    assert report.refused_window_closed == ((b"c", 12),)
    assert report.failed == ((b"d", 13),)
    assert [e.key for e in j] == [b"d"]
    assert (b"b", "replay", None, 11) in site.sent        # a removal replays as None
    assert site.metrics.value("dr_replays_total", outcome="refused_newer") == 1
    assert report.errors and "Timeout" in report.errors[0]


def test_a_replay_refused_because_the_site_was_not_promoted_is_a_failure() -> None:
    name, error = outcome_of(ReplayRefused("no", {"version": None,
                                                  "reason": "not_promoted"}))
    assert name == "failed" and error is not None
    assert outcome_of(NotPrimary("follower"))[0] == "failed"


def test_a_site_promoted_from_us_and_only_that_counts_as_promoted_from_us() -> None:
    assert promoted_from(DRRecord(2, "primary", 1, "east"), "east")
    assert not promoted_from(DRRecord(2, "primary", 1, "west"), "east")
    assert not promoted_from(DRRecord(2, "follower", 0, "east"), "east")
    assert not promoted_from(None, "east")


def test_the_dr_site_option_takes_a_url_or_seeds() -> None:
    assert site_options({"url": "dds://h1:1,h2:2/west", "secret": "s"}) == {
        "seeds": ["h1:1", "h2:2"], "cluster": "west", "secret": "s"}
    assert site_options({"seeds": ["h:1"], "cluster": "w", "secret": "s"})["cluster"] == "w"


@pytest.mark.parametrize("bad, named", [
    ({"seeds": ["h:1"], "secret": "s"}, "cluster"),
    ({"cluster": "w", "secret": "s"}, "seeds"),
    ({"seeds": ["h:1"], "cluster": "w"}, "exactly one of secret"),
    ({"url": "http://h:1/w", "secret": "s"}, "dds://"),
    ({"seeds": ["h:1"], "cluster": "w", "secret": "s", "colour": 1}, "colour"),
])
def test_a_bad_dr_site_option_is_refused_by_name(bad: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidRequest, match=named):
        site_options(bad)


def test_an_unknown_failover_mode_is_refused() -> None:
    client = FakeClient()
    with pytest.raises(InvalidRequest, match="dr_failover"):
        DrSide(client, DrJournal(), None, "sometimes")  # type: ignore[arg-type]
