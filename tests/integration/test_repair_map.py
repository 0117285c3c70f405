"""``dds-admin repair``, step ``map`` (tools/mapcheck.py), against real bricks.

Gossip is slowed to once an hour, so a record pushed to some bricks only stays there
until repair acts: a brick that lags, or two contents of one record at one version
(which the record-change 2PC never makes; here a ``map_push`` of a new version to some
bricks makes it, as manual surgery would).  The contents differ only in the order of the
RG's members: a real difference of fingerprint, and harmless to the running bricks.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest_twisted
from twisted.internet import reactor

from dds.maps import ClusterMap
from dds.records import Record, RGRecord

from tests.harness.admin import admin, admin_json
from tests.harness.aio import call
from tests.harness.cluster import Cluster

NO_GOSSIP = {"gossip_interval_ms": 3_600_000}


async def started(cluster_factory: Any) -> tuple[Cluster, RGRecord]:
    cluster: Cluster = cluster_factory(bricks=3, replication=3, partitions=2,
                                       timeout_settings=NO_GOSSIP)
    await cluster.init(reactor, wait_serving=False)
    rg = (await maps(cluster))["b1"].rgs["rg0"]
    assert [m.brick for m in rg.members] == ["b1", "b2", "b3"]
    return cluster, rg


async def maps(cluster: Cluster) -> dict[str, ClusterMap]:
    out = {}
    for b in cluster.bricks:
        reply = await call(cluster, b, "map_get", {})
        out[b.id] = ClusterMap.from_wire(reply["map"])
    return out


async def push(cluster: Cluster, brick: str, *records: Record) -> None:
    reply = await call(cluster, cluster.brick(brick), "map_push",
                       {"records": [r.canonical() for r in records]})
    assert reply == {"adopted": len(records), "conflicts": []}


def reordered(rg: RGRecord, order: str) -> RGRecord:
    """The next version of ``rg`` with its members in ``order`` (e.g. ``"b2 b1 b3"``)."""
    by_id = {m.brick: m for m in rg.members}
    return rg.with_changes(members=[by_id[b] for b in order.split()])


def map_step(report: dict[str, Any]) -> dict[str, Any]:
    [step] = [s for s in report["steps"] if s["name"] == "map"]
    assert step["ran"] is True
    result: dict[str, Any] = step["result"]
    return result


def held(cmaps: dict[str, ClusterMap], rid: str) -> dict[str, tuple[int, int]]:
    return {b: (m.records[rid].version, m.records[rid].fp) for b, m in cmaps.items()}


@pytest_twisted.ensureDeferred
async def test_bricks_that_agree_are_only_checked(cluster_factory: Any) -> None:
    cluster, _rg = await started(cluster_factory)
    before = await maps(cluster)
    report = admin_json(cluster, "repair", "--step", "map")
    result = map_step(report)
    m = before["b1"]
    assert result["ok"] is True and report["ok"] is True
    assert result["summary"] == f"all 3 bricks agree on map version {m.version} " \
                                f"fp {m.fp:#010x}"
    assert result["pushes"] == [] and result["conflicts"] == []
    assert {r["state"] for r in result["records"]} == {"agreed"}
    assert await maps(cluster) == before


@pytest_twisted.ensureDeferred
async def test_a_brick_holding_an_older_record_gets_the_newest_pushed(
        cluster_factory: Any) -> None:
    cluster, rg = await started(cluster_factory)
    new = reordered(rg, "b2 b1 b3")
    await push(cluster, "b1", new)
    await push(cluster, "b2", new)
    assert held(await maps(cluster), rg.record_id)["b3"] == (rg.version, rg.fp)

    result = map_step(admin_json(cluster, "repair", "--step", "map"))

    [lagging] = [r for r in result["records"] if r["state"] != "agreed"]
    assert lagging["record"] == rg.record_id and lagging["state"] == "lagging"
    assert [(h["version"], h["bricks"]) for h in lagging["held"]] == \
        [(new.version, ["b1", "b2"]), (rg.version, ["b3"])]
    assert result["pushes"] == [{"brick": "b3", "records": [f"{rg.record_id}@{new.version}"],
                                 "adopted": 1}]
    assert result["ok"] is True and result["conflicts"] == []
    assert set(held(await maps(cluster), rg.record_id).values()) == {(new.version, new.fp)}


@pytest_twisted.ensureDeferred
async def test_a_conflict_is_won_by_the_majority_of_members_at_a_new_version(
        cluster_factory: Any) -> None:
    cluster, rg = await started(cluster_factory)
    major, minor = reordered(rg, "b2 b1 b3"), reordered(rg, "b3 b1 b2")
    await push(cluster, "b1", major)
    await push(cluster, "b2", major)
    await push(cluster, "b3", minor)

    report = admin_json(cluster, "repair", "--step", "map")
    result = map_step(report)

    [conflict] = result["conflicts"]
    assert conflict["record"] == rg.record_id and conflict["version"] == major.version
    assert conflict["winner"]["bricks"] == ["b1", "b2"]
    assert conflict["how"] == "record change (majority 2PC)"
    won = attrs.evolve(major, version=major.version + 1)
    assert conflict["committed"] == {"version": won.version, "fp": won.fp,
                                     "fp_text": f"{won.fp:#010x}"}
    assert result["ok"] is True and report["ok"] is True
    after = await maps(cluster)
    assert set(held(after, rg.record_id).values()) == {(won.version, won.fp)}
    assert len({m.fp for m in after.values()}) == 1


@pytest_twisted.ensureDeferred
async def test_a_conflict_no_majority_holds_is_refused_and_nothing_changes(
        cluster_factory: Any) -> None:
    cluster, rg = await started(cluster_factory)
    await push(cluster, "b1", reordered(rg, "b2 b1 b3"))
    await push(cluster, "b2", reordered(rg, "b3 b1 b2"))
    await push(cluster, "b3", reordered(rg, "b1 b3 b2"))
    # A lagging record as well: repair must not push it either.
    b1 = (await maps(cluster))["b1"].bricks["b1"]
    await push(cluster, "b2", attrs.evolve(b1, version=b1.version + 1, host="rack-9"))
    before = await maps(cluster)

    report = admin_json(cluster, "repair", "--step", "map", code=1)
    result = map_step(report)

    assert result["ok"] is False and result["unresolved"] == [rg.record_id]
    [conflict] = result["conflicts"]
    assert conflict["winner"] is None
    assert "no safe choice" in conflict["rule"]
    assert [len(c["votes"]) for c in conflict["candidates"]] == [1, 1, 1]
    assert result["pushes"] == []
    assert await maps(cluster) == before
    human = admin(cluster, "repair", "--step", "map")
    assert human.returncode == 1, human.stderr
    assert "refused, nothing changed: no safe choice for rg/" in human.stdout


@pytest_twisted.ensureDeferred
async def test_a_dry_run_shows_the_choice_and_changes_nothing(cluster_factory: Any) -> None:
    cluster, rg = await started(cluster_factory)
    major = reordered(rg, "b2 b1 b3")
    await push(cluster, "b1", major)
    await push(cluster, "b2", major)
    await push(cluster, "b3", reordered(rg, "b3 b1 b2"))
    before = await maps(cluster)

    report = admin_json(cluster, "repair", "--step", "map", "--dry-run")
    result = map_step(report)

    [conflict] = result["conflicts"]
    assert conflict["winner"]["bricks"] == ["b1", "b2"] and "committed" not in conflict
    assert result["summary"].startswith(
        f"would make 1 conflicting record(s) win at a new version: {rg.record_id} "
        f"v{major.version} → v{major.version + 1} contents {major.fp:#010x}")
    assert await maps(cluster) == before


@pytest_twisted.ensureDeferred
async def test_prefer_names_the_brick_whose_contents_win_without_a_majority(
        cluster_factory: Any) -> None:
    cluster, rg = await started(cluster_factory)
    chosen = reordered(rg, "b1 b3 b2")
    await push(cluster, "b1", reordered(rg, "b2 b1 b3"))
    await push(cluster, "b2", reordered(rg, "b3 b1 b2"))
    await push(cluster, "b3", chosen)

    result = map_step(admin_json(cluster, "repair", "--step", "map", "--prefer", "b3"))

    [conflict] = result["conflicts"]
    assert conflict["forced"] is True and conflict["how"] == "push"
    won = attrs.evolve(chosen, version=chosen.version + 1)
    assert set(held(await maps(cluster), rg.record_id).values()) == {(won.version, won.fp)}
    assert result["ok"] is True


@pytest_twisted.ensureDeferred
async def test_an_unreachable_brick_is_reported_and_the_others_are_repaired(
        cluster_factory: Any) -> None:
    cluster, rg = await started(cluster_factory)
    cluster.brick("b3").stop()
    new = reordered(rg, "b2 b1 b3")
    await push(cluster, "b1", new)

    report = admin_json(cluster, "repair", "--step", "map", code=1,
                        seeds=cluster.bricks[:2])
    result = map_step(report)

    assert [u["brick"] for u in result["unreachable"]] == ["b3"]
    assert result["pushes"] == [{"brick": "b2", "records": [f"{rg.record_id}@{new.version}"],
                                 "adopted": 1}]
    assert result["ok"] is False
    assert result["summary"].endswith("all 2 reachable bricks agree on map version "
                                      f"{result['bricks_after'][0]['map_version']} fp "
                                      f"{result['bricks_after'][0]['map_fp']:#010x}; "
                                      "not reachable, not checked: b3")
    for b in cluster.bricks[:2]:
        reply = await call(cluster, b, "map_get", {})
        assert ClusterMap.from_wire(reply["map"]).records[rg.record_id] == new
