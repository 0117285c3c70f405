"""The client journal, its replay and failover with real bricks (DESIGN §12, issue 17):
a primary whose DR record says a DR site follows it (votes carry ``at``), and a second
cluster made a promoted DR site by pushing its DR record (what ``dds-admin dr promote``
pushes).  No follower runs here, so no tag ever covers an entry: the journal keeps
every acknowledged write, which is what these tests need.

- a replay applies the writes the DR site holds at an older version (or not at all) and
  refuses the ones it holds at the same or a newer version, and both leave the journal;
- a replay at a site that was not promoted is refused, nothing replayed;
- during the replay window a new write at the promoted site waits, and is applied only
  once the window has closed;
- a full journal refuses a write (at once, or at its deadline) with nothing applied;
- with the primary killed, a client fails over by itself: it replays, then writes at the
  DR site."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from dds.drmsgs import DrRead
from dds.errors import JournalFull, NotPrimary
from dds.lib import DDSClient

from tests.faults.drsites import attach, promote, push_dr, site_option
from tests.harness.admin import clean_env
from tests.harness.aio import eventually
from tests.harness.cluster import Cluster

SMALL = {"bricks": 3, "replication": 3, "partitions": 4}


@pytest.fixture(scope="module")
def pair(shared_cluster_factory: Callable[..., Cluster]) -> Iterator[tuple[Cluster, Cluster]]:
    """A primary and a would-be DR site, shared: each test sets the DR records it needs
    and writes keys of its own."""
    yield shared_cluster_factory(**SMALL), shared_cluster_factory(**SMALL)


async def _client(primary: Cluster, site: Cluster, **options: Any) -> DDSClient:
    options.setdefault("dr_failover", "manual")
    return await primary.client(reactor, dr_site=site_option(site), metrics_registry=None,
                                **options)


def _keys(tag: str, n: int) -> list[bytes]:
    return [f"{tag}-{i}".encode() for i in range(n)]


@pytest_twisted.ensureDeferred
async def test_replay_applies_writes_older_at_the_site_and_refuses_newer_ones(
        pair: tuple[Cluster, Cluster]) -> None:
    primary, site = pair
    await attach(reactor, primary, site)
    await push_dr(reactor, site, "primary")          # a plain primary: takes writes
    client = await _client(primary, site)
    at_site = await site.client(reactor, metrics_registry=None)
    try:
        absent, older, same, newer = _keys("replay", 4)
        acked = {k: await client.put(k, b"primary-" + k) for k in (absent, older, same)}
        acked[newer] = await client.put(newer, b"primary-" + newer)
        acked[older] = await client.put(older, b"primary-again-" + older)    # v2
        assert len(client.dr_journal) == 4           # superseded v1 of `older` left
        await at_site.put(older, b"site")            # v1 < the journal's v2
        await at_site.put(same, b"site")             # v1 == the journal's v1
        for _ in range(2):
            await at_site.put(newer, b"site")        # v2 > the journal's v1
        await promote(reactor, site, window_s=60.0)

        report = await client.dr_replay()

        assert sorted(report.applied) == sorted([(absent, 1), (older, 2)])
        assert sorted(report.refused_newer) == sorted([(same, 1), (newer, 1)])
        assert report.failed == () and report.refused_window_closed == ()
        assert len(client.dr_journal) == 0
        for k, want in ((absent, (b"primary-" + absent, 1)),
                        (older, (b"primary-again-" + older, 2)),
                        (same, (b"site", 1)), (newer, (b"site", 2))):
            got = await at_site.get(k)
            assert (got.value, got.version) == want
        applied = sum(site.metric(b.id, "dr_replays_total", outcome="applied")
                      for b in site.bricks)
        assert applied == 2 * len(site.bricks)       # each member counts what it voted
    finally:
        await client.close()
        await at_site.close()


@pytest_twisted.ensureDeferred
async def test_entries_leave_the_journal_once_a_tag_covers_them(
        pair: tuple[Cluster, Cluster]) -> None:
    primary, site = pair
    await attach(reactor, primary, site)
    client = await _client(primary, site)
    try:
        pid, rec = next(iter(sorted(client.map.partition_rg.items())))
        keys = [k for k in _keys("tagged", 60) if pid.owns(k)][:5]
        for k in keys:
            await client.put(k, b"v")
        assert len(client.dr_journal) == len(keys)
        gauge = client.metrics.value("dr_journal_entries")
        assert gauge == len(keys)
        # What the DR follower does: read the partition, then report what it applied.
        for brick_id in rec.active_members:
            conn = await primary.admin_connection(reactor, primary.brick(brick_id))
            try:
                ref = dict(pid=str(pid), rg=rec.name, rg_version=rec.version,
                           rg_fp=rec.fp)
                page = await conn.send(DrRead(position="beginning", **ref), timeout=10)
                await conn.send(DrRead(position=page["position"], applied=page["position"],
                                       applied_by=brick_id, **ref), timeout=10)
            finally:
                conn.close()

        async def covered() -> bool:        # the library polls dr_tags once a second
            return len(client.dr_journal) == 0
        await eventually(covered, 30.0, "the journal's entries to be covered")
        assert client.metrics.value("dr_journal_covered_total") >= len(keys)
        assert client.metrics.value("dr_tag_polls_total") >= 1
        assert client.metrics.value("dr_journal_entries") == 0
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_restarted_client_replays_the_journal_its_file_kept(
        pair: tuple[Cluster, Cluster], tmp_path: Path) -> None:
    primary, site = pair
    await attach(reactor, primary, site)
    path = tmp_path / "journal"
    before = await _client(primary, site, dr_journal_path=str(path))
    keys = _keys("reloaded", 3)
    try:
        acked = {k: await before.put(k, b"kept-" + k) for k in keys}
    finally:
        await before.close()                         # the service stops
    await promote(reactor, site, window_s=60.0)
    after = await _client(primary, site, dr_journal_path=str(path))
    at_site = await site.client(reactor, metrics_registry=None)
    try:
        assert sorted((e.key, e.version) for e in after.dr_journal) == sorted(acked.items())
        report = await after.dr_replay()
        assert sorted(report.applied) == sorted(acked.items())
        for k, v in acked.items():
            got = await at_site.get(k)
            assert (got.value, got.version) == (b"kept-" + k, v)
    finally:
        await after.close()
        await at_site.close()


@pytest_twisted.ensureDeferred
async def test_a_replay_at_a_site_not_promoted_is_refused_with_nothing_replayed(
        pair: tuple[Cluster, Cluster]) -> None:
    primary, site = pair
    await attach(reactor, primary, site)
    await push_dr(reactor, site, "follower", primary="dds")
    client = await _client(primary, site)
    try:
        key = _keys("unpromoted", 1)[0]
        await client.put(key, b"v")
        with pytest.raises(NotPrimary, match="not promoted"):
            await client.dr_replay()
        assert [e.key for e in client.dr_journal] == [key]
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_new_write_during_the_replay_window_waits_and_is_applied_after_it(
        pair: tuple[Cluster, Cluster]) -> None:
    _primary, site = pair
    rec = await promote(reactor, site, window_s=3.0)
    at_site = await site.client(reactor, metrics_registry=None, timeout=30.0)
    try:
        key = _keys("window", 1)[0]
        version = await at_site.put(key, b"after the window")
        assert time.time() * 1000 >= rec.replay_until_ms
        got = await at_site.get(key)
        assert (got.value, got.version) == (b"after the window", version)
    finally:
        await at_site.close()


@pytest_twisted.ensureDeferred
async def test_a_full_journal_refuses_a_write_at_once_with_nothing_applied(
        pair: tuple[Cluster, Cluster]) -> None:
    primary, site = pair
    await attach(reactor, primary, site)
    client = await _client(primary, site, dr_journal_max_entries=2,
                           dr_journal_when_full="fail")
    try:
        first, second, third = _keys("full-fail", 3)
        await client.put(first, b"v")
        await client.put(second, b"v")
        with pytest.raises(JournalFull, match="nothing was applied"):
            await client.put(third, b"v")
        got = await client.get(third)
        assert (got.value, got.version) == (None, 0)
        assert len(client.dr_journal) == 2
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_write_waiting_for_room_fails_at_its_deadline_with_nothing_applied(
        pair: tuple[Cluster, Cluster]) -> None:
    primary, site = pair
    await attach(reactor, primary, site)
    client = await _client(primary, site, dr_journal_max_entries=1)
    try:
        first, second = _keys("full-wait", 2)
        await client.put(first, b"v")
        with pytest.raises(JournalFull, match="after waiting"):
            await client.put(second, b"v", timeout=1.0)
        got = await client.get(second)
        assert (got.value, got.version) == (None, 0)
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_client_fails_over_by_itself_replays_and_then_writes_at_the_site(
        cluster_factory: Callable[..., Cluster]) -> None:
    primary, site = cluster_factory(**SMALL), cluster_factory(**SMALL)
    await primary.init(reactor)
    await site.init(reactor)
    await attach(reactor, primary, site)
    client = await primary.client(reactor, dr_site=site_option(site), timeout=20.0,
                                  metrics_registry=None)
    try:
        keys = _keys("failover", 6)
        acked = {k: await client.put(k, b"primary-" + k) for k in keys}
        await promote(reactor, site, window_s=4.0)
        for b in primary.bricks:
            b.stop(signal.SIGKILL)

        first = await client.get(keys[0])            # fails at the primary: fails over

        assert client.dr.failed_over is not None
        report = client.dr.last_report
        assert report is not None and sorted(report.applied) == sorted(acked.items())
        assert (first.value, first.version) == (b"primary-" + keys[0], acked[keys[0]])
        for k, v in acked.items():
            got = await client.get(k)                # read at the DR site now
            assert (got.value, got.version) == (b"primary-" + k, v)
        version = await client.put(b"after-failover", b"new")   # after the window
        assert (await client.get(b"after-failover")).version == version
    finally:
        await client.close()


FACE = """
import asyncio, json, sys
cfg = json.loads(sys.argv[1])
primary = dict(cluster="dds", secret=bytes.fromhex(cfg["secret"]), timeout=10.0,
               dr_failover="manual",
               dr_site={"seeds": cfg["site"], "cluster": "dds",
                        "secret": bytes.fromhex(cfg["site_secret"])})
keys = [k.encode() for k in cfg["keys"]]
"""

BLOCKING = FACE + """
from dds.lib import BlockingDDSClient
with BlockingDDSClient(cfg["seeds"], **primary) as c:
    versions = [c.put(k, b"v") for k in keys]
    kept = len(c.dr_journal)
    report = c.dr_replay()
print(json.dumps({"kept": kept, "applied": len(report.applied), "left": len(c.dr_journal)}))
"""

ASYNCIO = FACE + """
from dds.lib import AsyncDDSClient
async def main():
    async with AsyncDDSClient.connect(cfg["seeds"], **primary) as c:
        for k in keys:
            await c.put(k, b"v")
        kept = len(c.dr_journal)
        report = await c.dr_replay()
        return {"kept": kept, "applied": len(report.applied), "left": len(c.dr_journal)}
print(json.dumps(asyncio.run(main())))
"""


@pytest.mark.parametrize("face", ["blocking", "asyncio"])
@pytest_twisted.ensureDeferred
async def test_the_blocking_and_asyncio_faces_journal_and_replay(
        pair: tuple[Cluster, Cluster], face: str) -> None:
    primary, site = pair
    await attach(reactor, primary, site)
    await promote(reactor, site, window_s=60.0)
    secret, site_secret = (c.credentials("client").secret("client")
                           for c in (primary, site))
    assert secret is not None and site_secret is not None
    keys = [f"face-{face}-{i}" for i in range(3)]
    cfg = {"seeds": primary.seeds, "site": site.seeds, "secret": secret.hex(),
           "site_secret": site_secret.hex(), "keys": keys}
    script = BLOCKING if face == "blocking" else ASYNCIO
    child = await deferToThread(subprocess.run, [sys.executable, "-c", script,
                                                 json.dumps(cfg)],
                                capture_output=True, text=True, timeout=120,
                                env=clean_env())
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout) == {"kept": 3, "applied": 3, "left": 0}
