"""``dds-admin dr promote`` against real bricks (DESIGN §12, issue 17): refused unless the
site follows a primary (and the primary, when named, is unreachable); a follower is
promoted: every brick holds the new DR record, whose window then makes writes wait, and
the report says what it can of the loss window."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import pytest_twisted
from twisted.internet import reactor

from dds.changepos import Position
from dds.drmsgs import DrApply
from dds.messages import Get
from dds.records import DRRecord

from tests.faults.drsites import _maps, push_dr
from tests.harness.admin import admin, admin_json
from tests.harness.cluster import CLUSTER, Cluster


@pytest.fixture(scope="module")
def site(shared_cluster_factory: Callable[..., Cluster]) -> Cluster:
    return shared_cluster_factory(bricks=3, replication=3, partitions=4)


async def _records(cluster: Cluster) -> list[DRRecord | None]:
    return [m.dr for m in await _maps(reactor, cluster)]


@pytest_twisted.ensureDeferred
async def test_promote_of_a_cluster_that_is_not_a_follower_is_refused(site: Cluster) -> None:
    rec = await push_dr(reactor, site, "primary")
    result = admin(site, "dr", "promote", "--yes")
    assert result.returncode == 1
    assert "refusing to promote" in result.stderr
    assert "not a DR site" in result.stderr
    assert await _records(site) == [rec] * len(site.bricks)


@pytest_twisted.ensureDeferred
async def test_promote_is_refused_while_the_named_primary_answers(site: Cluster) -> None:
    rec = await push_dr(reactor, site, "follower", primary=CLUSTER)
    alive = f"dds://{site.bricks[0].address}/{CLUSTER}"     # anything that answers
    result = admin(site, "dr", "promote", "--yes", "--primary", alive)
    assert result.returncode == 1
    assert f"the primary answers at {site.bricks[0].address}" in result.stderr
    assert await _records(site) == [rec] * len(site.bricks)


@pytest_twisted.ensureDeferred
async def test_a_follower_is_promoted_on_every_brick_with_its_replay_window(
        site: Cluster) -> None:
    old = await push_dr(reactor, site, "follower", primary=CLUSTER)
    before = int(time.time() * 1000)
    report = admin_json(site, "dr", "promote", "--yes", "--window", "2", "--wait")
    assert report["ok"] and report["epoch"] == old.epoch + 1
    assert report["primary"] == CLUSTER
    assert report["replay_until_ms"] >= before + 2000
    want = DRRecord(report["record_version"], "primary", old.epoch + 1, CLUSTER, "",
                    report["replay_until_ms"])
    assert await _records(site) == [want] * len(site.bricks)
    assert report["agreement"]["partitions"] == site.partitions
    assert report["replays"] == {"applied": 0, "newer": 0, "window_closed": 0,
                                 "not_promoted": 0}
    # The window has closed (--wait): the site takes writes now.
    client = await site.client(reactor, metrics_registry=None)
    try:
        assert await client.put(b"promoted", b"v") >= 1
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_promote_makes_the_replicas_agree_and_reports_the_cut_off_of_the_marks(
        site: Cluster) -> None:
    await push_dr(reactor, site, "follower", primary=CLUSTER)
    cmap = (await _maps(reactor, site))[0]
    pid, rec = sorted(cmap.partition_rg.items())[0]
    key = next(k for k in (b"agree-%d" % i for i in range(100)) if pid.owns(k))
    safe_ms = int(time.time() * 1000) - 5000
    mark = Position(pid, "ab" * 16, 7, safe_ms / 1000).encode()
    # What a follower killed half-way through a page leaves: one replica has the row.
    first = site.brick(rec.active_members[0])
    conn = await site.admin_connection(reactor, first)
    try:
        await conn.send(DrApply(str(pid), rec.name, rec.version, rec.fp,
                                [(key, b"newest", 5)], {str(pid): [mark, safe_ms]}),
                        timeout=10)
    finally:
        conn.close()

    report = admin_json(site, "dr", "promote", "--yes", "--window", "0")

    assert report["agreement"]["keys_copied"] == 1
    assert report["cutoffs"][str(pid)]["safe_ms"] == safe_ms
    assert report["oldest_cutoff_ms"] == safe_ms
    assert report["loss_window_ms"] == report["promoted_at_ms"] - safe_ms
    for brick_id in rec.active_members:
        conn = await site.admin_connection(reactor, site.brick(brick_id))
        try:
            got = await conn.send(Get(pid=str(pid), key=key, rg=rec.name,
                                      rg_version=rec.version, rg_fp=rec.fp), timeout=10)
        finally:
            conn.close()
        assert (got["value"], got["version"]) == (b"newest", 5), brick_id
