"""Tests of dds.tools.placement: the initial layout made by ``dds-admin init``."""

from __future__ import annotations

import os
import warnings
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dds.config import BrickEntry, ClusterConfig, ClusterSection, parse_cluster_config
from dds.maps import ClusterMap
from dds.partition import initial_partitions
from dds.records import BrickRecord, ClusterRecord, RGRecord
from dds.tools.placement import (PlacementError, PlacementWarning, assign_groups, plan,
                                 plan_cluster)


def config(n: int, replication: int = 3, partitions: int = 16,
           hosts: list[str] | None = None, name: str = "dds") -> ClusterConfig:
    bricks = [{"id": f"b{i + 1}", "address": f"127.0.0.1:{7401 + i}",
               "host": hosts[i] if hosts else f"m{i + 1}"} for i in range(n)]
    return parse_cluster_config({"cluster": {"name": name, "replication": replication,
                                             "partitions": partitions},
                                 "bricks": bricks})


def rgs_of(records: list) -> list[RGRecord]:
    return [r for r in records if isinstance(r, RGRecord)]


def check_plan(cfg: ClusterConfig, expect_distinct_hosts: bool) -> None:
    p = plan(cfg)
    n, r = len(cfg.bricks), cfg.cluster.replication
    m = ClusterMap.of(p.records)
    assert len(p.records) == 1 + n + n
    assert m.cluster is not None and m.cluster.replication == r
    assert sorted(m.rgs) == sorted(f"rg{i}" for i in range(n))
    # Every record starts at version 1.
    assert {rec.version for rec in p.records} == {1}
    host_of = {b.id: b.failure_domain for b in m.bricks.values()}
    memberships: Counter[str] = Counter()
    per_brick: Counter[str] = Counter({b: 0 for b in host_of})
    for rg in m.rgs.values():
        members = [mem.brick for mem in rg.members]
        assert len(members) == r and len(set(members)) == r
        assert {mem.state for mem in rg.members} == {"active"}
        memberships.update(members)
        if expect_distinct_hosts:
            assert len({host_of[b] for b in members}) == r, rg
        for b in members:
            per_brick[b] += len(rg.partitions)
    # Balance: every brick in the same number of groups, partitions level within one.
    assert max(memberships.values()) - min(memberships.values()) <= 1
    assert set(memberships) == set(host_of)
    assert max(per_brick.values()) - min(per_brick.values()) <= 1
    # Partitions: all initial ones, each in exactly one group, per group level within one.
    parts = [e.pid for rg in m.rgs.values() for e in rg.partitions]
    assert sorted(parts) == initial_partitions(cfg.cluster.partitions)
    counts = [len(rg.partitions) for rg in m.rgs.values()]
    assert max(counts) - min(counts) <= 1
    # Round trip over the wire, then route keys.
    again = ClusterMap.from_wire(m.to_wire())
    assert again.fp == m.fp
    for i in range(500):
        key = f"key-{i}".encode()
        pid, rg = again.route(key)
        assert pid.owns(key) and rg.serves(pid, rg.members[0].brick)
    assert (p.warnings == ()) == expect_distinct_hosts


def test_six_bricks_default_layout() -> None:
    cfg = config(6)
    check_plan(cfg, expect_distinct_hosts=True)
    records = plan_cluster(cfg)
    assert isinstance(records[0], ClusterRecord)
    bricks = [r for r in records if isinstance(r, BrickRecord)]
    assert [(b.id, b.address, b.port, b.host) for b in bricks][:2] == [
        ("b1", "127.0.0.1", 7401, "m1"), ("b2", "127.0.0.1", 7402, "m2")]
    assert [[m.brick for m in rg.members] for rg in rgs_of(records)][:2] == [
        ["b1", "b2", "b3"], ["b2", "b3", "b4"]]


def test_plan_is_deterministic() -> None:
    assert ClusterMap.of(plan_cluster(config(7))).fp == ClusterMap.of(plan_cluster(config(7))).fp


@pytest.mark.parametrize("n,r,parts", [(1, 1, 1), (3, 3, 4), (4, 2, 16), (5, 3, 8),
                                       (6, 3, 16), (7, 3, 64), (12, 3, 32), (13, 5, 8),
                                       (24, 3, 16), (10, 1, 2)])
def test_balance_distinct_hosts(n: int, r: int, parts: int) -> None:
    check_plan(config(n, r, parts), expect_distinct_hosts=True)


def test_failure_domains_spread_when_possible() -> None:
    # Three machines with 3, 2 and 1 bricks, replication 2: every pair can be split.
    hosts = ["A", "A", "A", "B", "B", "C"]
    check_plan(config(6, 2, 8, hosts), expect_distinct_hosts=True)
    # Two machines with three bricks each, replication 2.
    check_plan(config(6, 2, 16, ["A", "B"] * 3), expect_distinct_hosts=True)


def test_unavoidable_shared_host_warns_but_plans() -> None:
    cfg = config(4, 3, 4, ["A", "A", "B", "B"])     # 2 hosts for 3 replicas
    p = plan(cfg)
    assert p.warnings and "only 2 failure domain(s) for 3 replicas" in p.warnings[0]
    check_plan(cfg, expect_distinct_hosts=False)
    with pytest.warns(PlacementWarning):
        plan_cluster(cfg)
    # One host with more than its share: A has 4 of 6 bricks, replication 2.
    p = plan(config(6, 2, 4, ["A", "A", "A", "A", "B", "C"]))
    assert p.warnings and "more than 1/2" in p.warnings[0]


def test_all_on_one_host_default_config_warns() -> None:
    cfg = parse_cluster_config({"cluster": {"replication": 3, "partitions": 4},
                                "bricks": [{"id": f"b{i}", "address": f"127.0.0.1:{7400 + i}"}
                                           for i in range(1, 4)]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = plan_cluster(cfg)
    assert any(issubclass(w.category, PlacementWarning) for w in caught)
    assert {r.host for r in records if isinstance(r, BrickRecord)} == {"127.0.0.1"}


def test_fewer_bricks_than_replication_is_an_error() -> None:
    cfg = ClusterConfig(cluster=ClusterSection(replication=4),
                        bricks=tuple(BrickEntry(id=f"b{i}", address=f"h{i}:7401", host=f"h{i}")
                                     for i in range(3)))
    with pytest.raises(PlacementError, match="4 replicas need at least 4 bricks, got 3"):
        plan_cluster(cfg)
    with pytest.raises(PlacementError):
        assign_groups(["a"], ["h"], 0)


def test_ipv6_address() -> None:
    cfg = parse_cluster_config({"cluster": {"replication": 1, "partitions": 1},
                                "bricks": [{"id": "b1", "address": "[::1]:7401"}]})
    brick = [r for r in plan_cluster(cfg) if isinstance(r, BrickRecord)][0]
    assert (brick.address, brick.port, brick.host) == ("::1", 7401, "::1")


@settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", "150")), deadline=None)
@given(st.integers(1, 20).flatmap(lambda n: st.tuples(
    st.just(n), st.integers(1, min(n, 5)), st.sampled_from([1, 2, 4, 8, 16, 32, 64]),
    st.lists(st.integers(0, n - 1), min_size=n, max_size=n))))
def test_properties(args: tuple[int, int, int, list[int]]) -> None:
    n, r, parts, host_idx = args
    hosts = [f"h{i}" for i in host_idx]
    per_host = Counter(hosts)
    feasible = len(per_host) >= r and max(per_host.values()) * r <= n
    check_plan(config(n, r, parts, hosts), expect_distinct_hosts=feasible)
