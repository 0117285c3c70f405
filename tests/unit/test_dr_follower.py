"""The DR follower's logic without a cluster (``tools/dr/``): which partitions it reads
and from where (splits, merges, the checkpoint), how a page's rows are routed and cut
into ``dr_apply`` requests for a DR site of another partitioning, what the site writer
does with each kind of failure, the site URL, attach's checks, and dr status's
aggregation of tags and marks."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from dds.changepos import Position
from dds.drmsgs import DrApply
from dds.errors import ConnectionLost, Locked, Refused, StaleMap
from dds.maps import ClusterMap
from dds.metricdefs import DR_FOLLOWER
from dds.metrics import Metrics
from dds.partition import PartitionId
from dds.records import BrickRecord, DRRecord, Member, PartitionEntry, RGRecord

from dds.lib.routing import Router
from dds.tools.dr.attach import attach_records, refusal
from dds.tools.dr.lineage import (Checkpoint, Lineage, load_checkpoint, safe_time,
                                  save_checkpoint)
from dds.tools.dr.site import SiteURL, parse_site_url
from dds.tools.dr.sitewriter import FollowerStopped, SiteWriter, chunks
from dds.tools.dr.status import marks_by_partition, tags_by_partition
from dds.tools.runner import AdminError

LINEAGE = "ef" * 16


def pos(pid: str, safe_s: float, lsn: int = 3) -> str:
    return Position(PartitionId.parse(pid), LINEAGE, lsn, safe_s).encode()


def cluster_map(depth: int, bricks: int = 3, port: int = 7400) -> ClusterMap:
    """``2**depth`` partitions, each in an RG of every brick."""
    recs: list[Any] = [BrickRecord(f"b{i}", 1, "127.0.0.1", port + i)
                       for i in range(1, bricks + 1)]
    members = [Member(b.id) for b in recs]
    recs.append(RGRecord("rg0", 1, members,
                         [PartitionEntry(PartitionId(depth, p)) for p in range(2 ** depth)]))
    return ClusterMap.of(recs)


# -- lineage -----------------------------------------------------------------------------

def test_at_start_every_active_partition_is_read_from_what_the_site_holds_or_the_beginning(
        ) -> None:
    parts = Lineage().initial(["p1.0", "p1.1"], {}, {"p1.1": (pos("p1.1", 5.0), "")})
    assert {p.pid: p.start for p in parts} == {"p1.0": "beginning",
                                               "p1.1": pos("p1.1", 5.0)}
    assert all(not p.applied for p in parts)


def test_a_checkpointed_partition_resumes_as_applied_by_its_brick() -> None:
    (part,) = Lineage().initial(["p0.0"], {"p0.0": (pos("p0.0", 7.0), "b2")}, {})
    assert (part.start, part.applied, part.applied_by) == (pos("p0.0", 7.0),
                                                           pos("p0.0", 7.0), "b2")


def test_a_checkpointed_parent_is_read_instead_of_its_active_children() -> None:
    parts = Lineage().initial(["p2.0", "p2.2", "p1.1"], {"p1.0": (pos("p1.0", 7.0), "b1")},
                              {})
    assert sorted(p.pid for p in parts) == ["p1.0", "p1.1"]


def test_a_split_starts_both_children_from_the_parents_position() -> None:
    lin = Lineage()
    (parent,) = lin.initial(["p0.0"], {}, {})
    parent.took(pos("p0.0", 9.0), "b3")
    started = lin.ended("p0.0", ["p1.0", "p1.1"])
    assert {p.pid: p.start for p in started} == {"p1.0": pos("p0.0", 9.0),
                                                 "p1.1": pos("p0.0", 9.0)}
    assert all(not p.applied for p in started)      # nothing of theirs applied yet
    assert set(lin.saved()) == {"p1.0", "p1.1"}     # the parent left the checkpoint


def test_a_merge_waits_for_both_halves_and_starts_from_the_older_position() -> None:
    lin = Lineage()
    lin.initial(["p1.0", "p1.1"], {}, {})
    lin.parts["p1.0"].took(pos("p1.0", 9.0), "b1")
    lin.parts["p1.1"].took(pos("p1.1", 4.0), "b2")
    assert lin.ended("p1.0", ["p0.0"]) == []
    assert "p1.0" in lin.saved()                    # kept until its successor starts
    (merged,) = lin.ended("p1.1", ["p0.0"])
    assert merged.start == pos("p1.1", 4.0)
    assert set(lin.saved()) == {"p0.0"}


def test_the_checkpoint_round_trips_and_belongs_to_one_pair_of_clusters(
        tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    ckpt = Checkpoint("east", "west", {"p1.0": (pos("p1.0", 3.0), "b1"),
                                       "p1.1": ("beginning", "")})
    save_checkpoint(path, ckpt)
    assert load_checkpoint(path, "east", "west") == ckpt
    with pytest.raises(AdminError, match="not of 'east' into 'other'"):
        load_checkpoint(path, "east", "other")
    assert load_checkpoint(tmp_path / "none.json", "east", "west") is None


def test_a_damaged_checkpoint_is_named_not_ignored(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_text('{"format": 1, "primary": "e"')
    with pytest.raises(AdminError, match="not a follower checkpoint"):
        load_checkpoint(path, "e", "w")


def test_the_safe_time_of_a_word_position_is_zero() -> None:
    assert safe_time("beginning") == 0.0 and safe_time(pos("p0.0", 12.5)) == 12.5


# -- routing and requests ---------------------------------------------------------------

def test_requests_hold_at_most_the_row_and_byte_limits() -> None:
    rows = [(b"k%d" % i, b"x" * 100, 1) for i in range(25)]
    cut = chunks(rows, max_bytes=1000, max_rows=4)
    assert [len(c) for c in cut] == [4, 4, 4, 4, 4, 4, 1]
    assert [r for c in cut for r in c] == rows
    assert chunks([(b"big", b"y" * 5000, 1)], max_bytes=1000) == [[(b"big", b"y" * 5000,
                                                                     1)]]


@attrs.define
class FakeConn:
    site: FakeSite
    brick: str

    def send(self, msg: DrApply, timeout: float) -> Deferred[Any]:
        self.site.sent.append((self.brick, msg))
        error = self.site.fail.pop((self.brick, msg.pid), None)
        if error is not None:
            d: Deferred[Any] = Deferred()
            d.errback(error)
            return d
        return succeed({"applied": len(msg.rows), "skipped": 0})


@attrs.define
class FakeMaps:
    map: ClusterMap
    refreshed: int = 0

    def refresh(self) -> Deferred[ClusterMap]:
        self.refreshed += 1
        return succeed(self.map)


@attrs.define
class FakeConnections:
    site: FakeSite

    def get(self, host: str, port: int) -> Deferred[FakeConn]:
        brick = next(b.id for b in self.site.maps.map.bricks.values() if b.port == port)
        return succeed(FakeConn(self.site, brick))


@attrs.define
class FakeExcluder:
    site: FakeSite

    def exclude(self, route: Any, brick: BrickRecord, reason: str,
                deadline: float) -> Deferred[bool]:
        self.site.excluded.append(brick.id)
        return succeed(True)


class FakeSite:
    """What ``SiteWriter`` uses of a ``DDSClient``."""

    def __init__(self, cmap: ClusterMap) -> None:
        self.clock = Clock()
        self.rng = random.Random(1)
        self.maps = FakeMaps(cmap)
        self.connections = FakeConnections(self)
        self.excluder = FakeExcluder(self)
        self.sent: list[tuple[str, DrApply]] = []
        self.fail: dict[tuple[str, str], Exception] = {}
        self.excluded: list[str] = []


def writer(cmap: ClusterMap) -> tuple[SiteWriter, FakeSite, Metrics]:
    site = FakeSite(cmap)
    metrics = Metrics(DR_FOLLOWER, None)
    return SiteWriter(site, metrics, lambda: False), site, metrics   # type: ignore[arg-type]


def run(site: FakeSite, d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    for _ in range(200):
        if out:
            break
        site.clock.advance(1.0)
    assert out, "did not finish"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def test_a_page_goes_to_every_member_of_each_dr_partition_its_keys_route_to() -> None:
    w, site, _ = writer(cluster_map(2))
    rows = [(b"key-%d" % i, b"v", 3) for i in range(40)]
    mark = {"p0.0": [pos("p0.0", 5.0), 5000]}
    run(site, Deferred.fromCoroutine(w.apply(rows, mark)))
    router, cmap = Router(), site.maps.map
    by_pid: dict[str, set[bytes]] = {}
    for brick, msg in site.sent:
        assert msg.marks == mark
        for key, _v, _ver in msg.rows:
            assert router.route(cmap, key).pid_text == msg.pid
        by_pid.setdefault(msg.pid, set()).update(r[0] for r in msg.rows)
    assert set().union(*by_pid.values()) == {r[0] for r in rows}
    assert len(site.sent) == 3 * len(by_pid)            # each DR partition, all 3 members


def test_a_stale_map_refreshes_it_and_sends_the_rows_again() -> None:
    w, site, metrics = writer(cluster_map(0))
    site.fail[("b2", "p0.0")] = StaleMap("stale")
    run(site, Deferred.fromCoroutine(w.apply([(b"k", b"v", 1)], {})))
    assert site.maps.refreshed >= 1
    assert sorted(b for b, _ in site.sent) == ["b1", "b1", "b2", "b2", "b3", "b3"]
    assert metrics.value("errors_total", code="stale_map") == 1


def test_an_unreachable_member_is_excluded_by_its_group() -> None:
    w, site, metrics = writer(cluster_map(0))
    site.fail[("b3", "p0.0")] = ConnectionLost("gone")
    run(site, Deferred.fromCoroutine(w.apply([(b"k", b"v", 1)], {})))
    assert site.excluded == ["b3"]
    assert metrics.value("exclusions_requested_total") == 1


def test_a_locked_key_is_retried_after_a_pause() -> None:
    w, site, _ = writer(cluster_map(0))
    site.fail[("b1", "p0.0")] = Locked("held")
    run(site, Deferred.fromCoroutine(w.apply([(b"k", b"v", 1)], {})))
    assert [b for b, _ in site.sent].count("b1") == 2 and site.excluded == []


def test_a_site_that_is_no_longer_a_follower_stops_the_follower() -> None:
    w, site, _ = writer(cluster_map(0))
    site.fail[("b1", "p0.0")] = Refused("dr_apply refused: this cluster is a primary")
    with pytest.raises(FollowerStopped, match="is a primary"):
        run(site, Deferred.fromCoroutine(w.apply([(b"k", b"v", 1)], {})))


def test_marks_go_to_every_dr_partition_without_rows() -> None:
    w, site, _ = writer(cluster_map(1))
    assert run(site, Deferred.fromCoroutine(w.marks({"p0.0": [pos("p0.0", 1.0), 1000]}))
               ) == 0
    assert sorted({m.pid for _, m in site.sent}) == ["p1.0", "p1.1"]
    assert all(m.rows == () and m.marks for _, m in site.sent)


# -- the site URL, attach's checks -------------------------------------------------------

def test_a_site_url_names_seeds_and_cluster() -> None:
    url = parse_site_url("dds://10.0.0.1:7401,[::1]:7402/west-dr")
    assert url == SiteURL((("10.0.0.1", 7401), ("::1", 7402)), "west-dr")
    assert parse_site_url(url.text()) == url


@pytest.mark.parametrize("bad", ["http://h:1/c", "dds://h/c", "dds://h:1/", "dds://:1/c"])
def test_a_bad_site_url_is_refused_with_the_expected_form(bad: str) -> None:
    with pytest.raises(AdminError):
        parse_site_url(bad)


@attrs.frozen
class View:
    map: ClusterMap
    dr: DRRecord | None


def test_attach_refuses_a_promoted_site_a_follower_of_another_and_itself() -> None:
    primary = View(cluster_map(1, port=7400), None)
    site = cluster_map(0, port=7500)
    assert refusal(primary, View(site, None), "east") is None
    assert "promoted at epoch 2" in refusal(
        primary, View(site, DRRecord(4, "primary", 2, "east")), "east")      # type: ignore
    assert "already follows 'north'" in refusal(
        primary, View(site, DRRecord(1, "follower", 0, "north")), "east")    # type: ignore
    assert "is this cluster" in refusal(primary, primary, "east")            # type: ignore
    assert "itself the DR site" in refusal(
        View(primary.map, DRRecord(1, "follower", 0, "x")), View(site, None), "east")  # type: ignore


def test_attach_pushes_new_records_only_where_they_differ() -> None:
    url = SiteURL((("h", 1),), "west")
    site_rec, primary_rec = attach_records(View(cluster_map(0), None),
                                           View(cluster_map(0), None), url, "east")
    assert site_rec == DRRecord(1, "follower", 0, "east")
    assert primary_rec == DRRecord(1, "primary", 0, "", url.text())
    again = attach_records(View(cluster_map(0), primary_rec), View(cluster_map(0), site_rec),
                           url, "east")
    assert again == (site_rec, primary_rec)


# -- dr status ---------------------------------------------------------------------------

def test_status_takes_each_partitions_newest_tag_among_its_members() -> None:
    cmap = cluster_map(1)
    replies = {"b1": {"tags": {"p1.0": ["b1", 5000, "A"]}, "now_ms": 9000},
               "b2": {"tags": {"p1.0": ["b2", 7000, "B"]}, "now_ms": 9500},
               "b3": "does not answer"}
    tags = tags_by_partition(cmap, replies)
    assert tags["p1.0"] == {"position": "B", "maker": "b2", "safe_ms": 7000,
                            "held_by": "b2", "lag_s": 2.5}
    assert tags["p1.1"] == {}


def test_status_takes_the_oldest_mark_over_the_dr_partitions() -> None:
    cmap = cluster_map(1)
    replies = {"b1": {"marks": {"p1.0": {"p0.0": ["A", 4000]},
                                "p1.1": {"p0.0": ["B", 6000]}}, "now_ms": 10000},
               "b2": {"marks": {"p1.0": {"p0.0": ["C", 5000]}}, "now_ms": 10000}}
    marks = marks_by_partition(cmap, replies)
    assert marks == {"p0.0": {"position": "C", "safe_ms": 5000, "lag_s": 5.0,
                              "dr_partitions": 2}}


def test_every_metric_the_follower_counts_is_declared() -> None:
    import ast
    folder = Path(__file__).resolve().parents[2] / "tools" / "dr"
    names = []
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("inc", "gauge") and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.func.value, (ast.Attribute, ast.Name))
                    and getattr(node.func.value, "attr", getattr(node.func.value, "id", ""))
                    == "metrics"):
                names.append(node.args[0].value)
    assert names
    for name in names:
        DR_FOLLOWER.lookup(name)


def test_the_status_table_shows_each_tags_position_maker_safe_time_and_lag() -> None:
    from io import StringIO

    from rich.console import Console

    from dds.tools.dr.status import render
    result = {"cluster": "east", "role": "primary", "silent": {},
              "dr_record": {"version": 2, "mode": "primary", "epoch": 0, "primary": "",
                            "site": "dds://h:1/west", "replay_until_ms": 0},
              "tags": {"p1.0": {"position": "AQEAAAAA", "maker": "b2",
                                "safe_ms": 3_723_004, "held_by": "b2", "lag_s": 1.25},
                       "p1.1": {}},
              "untagged": ["p1.1"], "lag_p50_s": 1.25, "lag_p99_s": 1.25, "lag_max_s": 1.25}
    out = StringIO()
    render(result, Console(file=out, width=200))
    text = out.getvalue()
    assert "DR site: dds://h:1/west" in text
    assert "b2" in text and "01:02:03.004" in text and "1.25" in text
    assert "1 partitions without a tag" in text


# -- group commit at the DR site ---------------------------------------------------------

def _lanes_and_sends() -> tuple[Any, list[tuple[list[Any], dict[str, Any], Deferred[None]]]]:
    from dds.tools.dr.lanes import Lanes
    sends: list[tuple[list[Any], dict[str, Any], Deferred[None]]] = []

    def send(route: Any, brick: Any, rows: list[Any], marks: dict[str, Any]
             ) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        sends.append((rows, marks, d))
        return d
    return Lanes(send), sends


def _route_of(cmap: ClusterMap) -> Any:
    from dds.lib.routing import Route
    pid, rg = next(iter(cmap.partition_rg.items()))
    return Route(pid, rg, [cmap.bricks[b] for b in rg.active_members])


def test_what_arrives_while_a_request_is_in_flight_goes_out_as_one_request() -> None:
    lanes, sends = _lanes_and_sends()
    route = _route_of(cluster_map(0))
    brick = route.replicas[0]
    first = lanes.submit(route, brick, [(b"a", b"1", 1)], {"p1.0": ["A", 10]})
    second = lanes.submit(route, brick, [(b"b", b"2", 1)], {"p1.1": ["B", 20]})
    third = lanes.submit(route, brick, [(b"c", b"3", 1)], {"p1.0": ["C", 30]})
    assert len(sends) == 1                      # one in flight per lane
    sends[0][2].callback(None)
    assert first.called and not second.called
    assert len(sends) == 2
    rows, marks, d = sends[1]
    assert rows == [(b"b", b"2", 1), (b"c", b"3", 1)]
    assert marks == {"p1.0": ["C", 30], "p1.1": ["B", 20]}
    d.callback(None)
    assert second.called and third.called
    assert (lanes.sent, lanes.carried) == (2, 3)


def test_a_failed_request_fails_every_caller_it_carried() -> None:
    lanes, sends = _lanes_and_sends()
    route = _route_of(cluster_map(0))
    lanes.submit(route, route.replicas[0], [(b"a", b"1", 1)], {})
    b = lanes.submit(route, route.replicas[0], [(b"b", b"1", 1)], {})
    c = lanes.submit(route, route.replicas[0], [(b"c", b"1", 1)], {})
    sends[0][2].callback(None)
    sends[1][2].errback(Locked("held"))
    for d in (b, c):
        errors: list[Any] = []
        d.addErrback(errors.append)
        assert errors and errors[0].check(Locked)
