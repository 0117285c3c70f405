"""The DR follower with real processes (DESIGN §12, issue 17): a primary of 4 bricks and
4 partitions, a DR site of 3 bricks and 2 partitions (another partitioning and
placement), attached with ``dds-admin dr attach`` and followed by ``dds-admin dr
follow`` running as a process of its own.

Every acknowledged write of the primary reaches the DR site at its version (compared key
by key); the follower killed with SIGKILL resumes from its checkpoint and converges; a
split of a primary partition is followed; the DR site refuses client writes
(``NotPrimary``), ``dr_apply`` from the client role (the role) and a malformed
``dr_apply`` (``InvalidRequest``, nothing changed); ``dr status`` shows each partition's
lag on both sites.  One pair of clusters for the whole file: nothing here stops a brick.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor

from dds.drmsgs import DrApply
from dds.errors import InvalidRequest, NotPrimary, PermissionDenied
from dds.lib import DDSClient
from dds.partition import PartitionId

from tests.harness.aio import eventually
from tests.harness.cluster import CLUSTER, Cluster
from tests.harness.local import admin

WAIT_S = 60.0


class FollowerProcess:
    """``dds-admin dr follow`` from the primary to the DR site, its output in a file."""

    def __init__(self, primary: Cluster, site: Cluster, root: Path) -> None:
        self.primary, self.site = primary, site
        self.state = root / "follower.json"
        self.log = root / "follower.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dds.tools.admin", "dr", "follow",
                 *primary_args(self.primary), "--site-secret-file",
                 str(self.site.root / "secrets" / "admin"), "--state", str(self.state),
                 "--poll-ms", "100", "--metrics-port", "0"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={k: v for k, v in os.environ.items() if k != "DDS_SECRET"})

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def metrics_url(self) -> str | None:
        """Where the follower started last serves /metrics (from its log)."""
        found = re.findall(r"metrics on (http://\S+/metrics)", self.output())
        return found[-1] if found else None


def primary_args(cluster: Cluster) -> list[str]:
    return ["--seeds", ",".join(cluster.seeds), "--secret-file",
            str(cluster.root / "secrets" / "admin"), "--cluster", CLUSTER]


def site_url(cluster: Cluster) -> str:
    return f"dds://{','.join(cluster.seeds)}/{CLUSTER}"


class Pair:
    def __init__(self, primary: Cluster, site: Cluster, follower: FollowerProcess,
                 root: Path) -> None:
        self.primary, self.site, self.follower, self.root = primary, site, follower, root

    async def clients(self) -> tuple[DDSClient, DDSClient]:
        return (await self.primary.client(reactor, timeout=20.0),
                await self.site.client(reactor, timeout=20.0))


@pytest.fixture(scope="module")
def pair(shared_cluster_factory: Any, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Pair]:
    primary = shared_cluster_factory(bricks=4, replication=3, partitions=4, lease_ms=1000)
    site = shared_cluster_factory(bricks=3, replication=3, partitions=2, lease_ms=1000)
    root = tmp_path_factory.mktemp("follower")
    attached = admin("dr", "attach", *primary_args(primary), "--site", site_url(site),
                     "--site-secret-file", str(site.root / "secrets" / "admin"),
                     "--no-follow", "--json")
    assert attached.returncode == 0, attached.stderr
    follower = FollowerProcess(primary, site, root)
    follower.start()
    yield Pair(primary, site, follower, root)
    follower.kill(signal.SIGTERM)


def keys_of(tag: str, n: int) -> list[bytes]:
    return [b"%s-%d" % (tag.encode(), i) for i in range(n)]


async def write(client: DDSClient, keys: list[bytes], rounds: int,
                acked: dict[bytes, int], removes: bool = False) -> None:
    for r in range(rounds):
        for i, k in enumerate(keys):
            if removes and r == rounds - 1 and i % 3 == 0:
                acked[k] = await client.remove(k)
            else:
                acked[k] = await client.put(k, b"%s=%d" % (k, r))


async def reach_the_site(site: DDSClient, primary: DDSClient, acked: dict[bytes, int],
                         what: str) -> None:
    """Until the DR site holds every key of ``acked`` at its version with the primary's
    value (a removal as a removal)."""
    async def there() -> bool:
        for k, version in acked.items():
            got = await site.get(k)
            if got.version != version:
                return False
        return True
    await eventually(there, WAIT_S, what)
    for k, version in acked.items():
        here, there_ = await primary.get(k), await site.get(k)
        assert (there_.value, there_.version) == (here.value, here.version) == (
            there_.value, version), k


@pytest_twisted.ensureDeferred
async def test_every_write_at_the_primary_reaches_the_dr_site_at_its_version(
        pair: Pair) -> None:
    primary, site = await pair.clients()
    acked: dict[bytes, int] = {}
    await write(primary, keys_of("all", 120), 3, acked, removes=True)
    await reach_the_site(site, primary, acked, "every write at the DR site")
    await primary.close()
    await site.close()


@pytest_twisted.ensureDeferred
async def test_a_write_to_the_dr_site_is_refused_with_not_primary(pair: Pair) -> None:
    _primary, site = await pair.clients()
    with pytest.raises(NotPrimary, match="DR site of"):
        await site.put(b"refused-at-the-site", b"v")
    assert (await site.get(b"refused-at-the-site")).version == 0
    await _primary.close()
    await site.close()


def _apply_to(site: DDSClient, pid_key: bytes, rows: list[Any]) -> tuple[Any, DrApply]:
    route = site.router.route(site.map, pid_key)
    rg = route.rg
    return route, DrApply(route.pid_text, rg.name, rg.version, rg.fp, rows, {})


@pytest_twisted.ensureDeferred
async def test_dr_apply_with_the_client_role_is_refused(pair: Pair) -> None:
    _primary, site = await pair.clients()
    route, msg = _apply_to(site, b"by-a-client", [[b"by-a-client", b"v", 9]])
    conn = await site.connections.get(route.replicas[0].address, route.replicas[0].port)
    with pytest.raises(PermissionDenied):
        await conn.send(msg, timeout=10)
    assert (await site.get(b"by-a-client")).version == 0
    await _primary.close()
    await site.close()


@pytest_twisted.ensureDeferred
async def test_a_malformed_dr_apply_is_invalid_and_changes_nothing(pair: Pair) -> None:
    primary, site = await pair.clients()
    mine = b"malformed-0"
    pid = PartitionId.parse(site.router.route(site.map, mine).pid_text)
    foreign = next(k for k in (b"foreign-%d" % i for i in range(100)) if not pid.owns(k))
    route, msg = _apply_to(site, mine, [[mine, b"v", 5], [foreign, b"v", 5]])
    brick = next(b for b in pair.site.bricks if b.id == route.replicas[0].id)
    conn = await pair.site.admin_connection(reactor, brick)
    try:
        with pytest.raises(InvalidRequest, match="does not belong to partition"):
            await conn.send(msg, timeout=10)
        with pytest.raises(InvalidRequest, match="row"):       # a row without a version
            await conn.call("dr_apply", {"pid": msg.pid, "rg": msg.rg,
                                         "rg_version": msg.rg_version, "rg_fp": msg.rg_fp,
                                         "rows": [[mine, b"v"]], "marks": {}}, timeout=10)
    finally:
        conn.transport.loseConnection()
    assert (await site.get(mine)).version == 0
    await primary.close()
    await site.close()


def _status(cluster: Cluster, *extra: str) -> dict[str, Any]:
    out = admin("dr", "status", *primary_args(cluster), "--json", *extra)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest_twisted.ensureDeferred
async def test_dr_status_shows_the_lag_of_every_primary_partition_on_both_sites(
        pair: Pair) -> None:
    primary, site = await pair.clients()
    acked: dict[bytes, int] = {}
    await write(primary, keys_of("status", 20), 1, acked)
    await reach_the_site(site, primary, acked, "the writes before the status")
    partitions = {str(p) for p in primary.map.partition_rg}
    found: dict[str, Any] = {}

    async def tagged() -> bool:
        found.update(_status(pair.primary))
        return set(found["tags"]) == partitions and all(found["tags"].values())
    await eventually(tagged, WAIT_S, "a tag for every primary partition")
    assert found["role"] == "primary"
    assert found["dr_record"]["site"] == site_url(pair.site)
    for tag in found["tags"].values():
        assert tag["lag_s"] >= 0 and tag["maker"] in {b.id for b in pair.primary.bricks}
    assert 0 <= found["lag_p50_s"] <= found["lag_p99_s"]

    marks: dict[str, Any] = {}

    async def marked() -> bool:
        marks.update(_status(pair.site))
        return set(marks.get("marks", {})) >= partitions
    await eventually(marked, WAIT_S, "a mark of every primary partition at the DR site")
    assert marks["role"] == "follower" and marks["dr_record"]["mode"] == "follower"
    assert all(m["lag_s"] >= 0 for m in marks["marks"].values())
    await primary.close()
    await site.close()


@pytest_twisted.ensureDeferred
async def test_every_member_of_a_primary_partition_holds_its_tag(pair: Pair) -> None:
    from dds.drmsgs import DrTags
    primary, site = await pair.clients()
    acked: dict[bytes, int] = {}
    await write(primary, keys_of("spread", 20), 1, acked)
    await reach_the_site(site, primary, acked, "the writes before the tags are read")
    members = {(str(pid), b) for pid, rg in primary.map.partition_rg.items()
               for b in rg.active_members}
    missing: set[tuple[str, str]] = set()

    async def everywhere() -> bool:
        missing.clear()
        for brick in pair.primary.bricks:
            conn = await pair.primary.admin_connection(reactor, brick)
            try:
                held = (await conn.send(DrTags(), timeout=10))["tags"]
            finally:
                conn.transport.loseConnection()
            missing.update((pid, b) for pid, b in members
                           if b == brick.id and pid not in held)
        return not missing
    await eventually(everywhere, WAIT_S, "a tag on every member")
    await primary.close()
    await site.close()


@pytest_twisted.ensureDeferred
async def test_the_follower_exports_rows_and_each_partitions_lag(pair: Pair) -> None:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families
    primary, site = await pair.clients()
    acked: dict[bytes, int] = {}
    await write(primary, keys_of("metrics", 20), 1, acked)
    await reach_the_site(site, primary, acked, "the writes before the scrape")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    async def scraped() -> bool:
        url = pair.follower.metrics_url()
        if url is None:
            return False
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        samples.clear()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples.get(("dds_dr_follower_rows_total", ()), 0) >= len(acked)
    await eventually(scraped, WAIT_S, "the follower's /metrics")
    lags = {dict(labels)["partition"] for (name, labels) in samples
            if name == "dds_dr_follower_lag_seconds"}
    assert lags >= {str(p) for p in primary.map.partition_rg}
    assert samples[("dds_dr_follower_partitions", ())] == len(primary.map.partition_rg)
    await primary.close()
    await site.close()


@pytest_twisted.ensureDeferred
async def test_the_follower_killed_and_restarted_resumes_and_converges(pair: Pair) -> None:
    primary, site = await pair.clients()
    acked: dict[bytes, int] = {}
    await write(primary, keys_of("kill", 60), 2, acked)
    await reach_the_site(site, primary, acked, "the writes before the kill")
    pair.follower.kill(signal.SIGKILL)
    await write(primary, keys_of("kill", 60), 2, acked)          # while it is down
    await write(primary, keys_of("down", 40), 1, acked)
    pair.follower.start()
    await reach_the_site(site, primary, acked, "the writes made while it was down")
    assert "(checkpoint" in pair.follower.output()       # resumed, not from the start
    await primary.close()
    await site.close()


@pytest_twisted.ensureDeferred
async def test_a_split_of_a_primary_partition_is_followed(pair: Pair) -> None:
    from dds.tools.cluster import Target
    from dds.tools.split import reshape
    primary, site = await pair.clients()
    pid = sorted(primary.map.partition_rg)[0]
    keys = [k for k in keys_of("split", 400) if pid.owns(k)][:40]
    acked: dict[bytes, int] = {}
    await write(primary, keys, 1, acked)
    await reach_the_site(site, primary, acked, "the writes before the split")
    target = Target(tuple(("127.0.0.1", b.port) for b in pair.primary.bricks),
                    pair.primary.admin_secret.encode(), CLUSTER)
    await reshape(reactor, target, "split", str(pid), lambda line: None,
                  lambda done, total: None)
    await primary.maps.refresh()
    assert pid not in primary.map.partition_rg
    await write(primary, keys, 2, acked)
    await reach_the_site(site, primary, acked, "the writes to the split partition's "
                         "children")
    await primary.close()
    await site.close()


@pytest_twisted.ensureDeferred
async def test_a_dr_brick_killed_is_excluded_and_the_follower_goes_on(
        cluster_factory: Any, tmp_path: Path) -> None:
    primary_c = cluster_factory(bricks=3, replication=3, partitions=2, lease_ms=1000)
    await primary_c.init(reactor)
    site_c = cluster_factory(bricks=4, replication=3, partitions=2, lease_ms=1000)
    await site_c.init(reactor)
    attached = admin("dr", "attach", *primary_args(primary_c), "--site", site_url(site_c),
                     "--site-secret-file", str(site_c.root / "secrets" / "admin"),
                     "--no-follow")
    assert attached.returncode == 0, attached.stderr
    follower = FollowerProcess(primary_c, site_c, tmp_path)
    follower.start()
    try:
        pair = Pair(primary_c, site_c, follower, tmp_path)
        primary, site = await pair.clients()
        acked: dict[bytes, int] = {}
        await write(primary, keys_of("dead", 60), 1, acked)
        await reach_the_site(site, primary, acked, "the writes before the kill")
        victim = next(b for b in site_c.bricks
                      if b.id in site.map.partition_rg[sorted(site.map.partition_rg)[0]]
                      .active_members)
        victim.stop(signal.SIGKILL)
        await write(primary, keys_of("dead", 60), 2, acked)
        await reach_the_site(site, primary, acked, "the writes after a DR brick died")
        await site.maps.refresh()
        assert all(victim.id not in rg.active_members
                   for rg in site.map.partition_rg.values())
        assert "asking its group to exclude it" in follower.output()
        await primary.close()
        await site.close()
    finally:
        follower.kill(signal.SIGTERM)
