"""``AsyncDDSClient`` on real bricks, from a plain ``asyncio.run`` program.

This process runs pytest-twisted's global reactor, so the asyncio side runs in a child
process of its own: the honest "service on asyncio, no Twisted reactor set up by the
application" environment.  Each test sends the child an ``async def main(c, cfg)`` body;
``c`` is a connected client, and what ``main`` returns comes back as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.harness.cluster import CLUSTER, Cluster

PRELUDE = """
import asyncio, json, sys
from dds import errors
from dds.lib import AsyncDDSClient

cfg = json.loads(sys.argv[1])

def auth(cfg):
    if cfg.get("tls"):
        return {"tls": cfg["tls"]}
    return {"secret": bytes.fromhex(cfg["secret"])}

def connect(cfg, **extra):
    return AsyncDDSClient.connect(cfg["seeds"], cluster=cfg["cluster"], timeout=10.0,
                                  **{**auth(cfg), **extra})
"""

WITH_CLIENT = """
async def run():
    async with connect(cfg) as c:
        return await main(c, cfg)

print(json.dumps(asyncio.run(run())))
"""

BARE = """
print(json.dumps(asyncio.run(main(None, cfg))))
"""


def _config(cluster: Cluster, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"seeds": cluster.seeds, "cluster": CLUSTER}
    if cluster.tls:
        folder = cluster.root / "tls"
        cfg["tls"] = {"ca": str(folder / "ca.crt"), "cert": str(folder / "client.crt"),
                      "key": str(folder / "client.key")}
    else:
        secret = cluster.credentials("client").secret("client")
        assert secret is not None
        cfg["secret"] = secret.hex()
    cfg.update(extra)
    return cfg


def run_asyncio(cluster: Cluster, body: str, *, with_client: bool = True,
                **extra: Any) -> Any:
    """Run ``body`` (defining ``async def main(c, cfg)``) under ``asyncio.run`` in a
    child process; its return value, or AssertionError with the child's stderr."""
    script = PRELUDE + textwrap.dedent(body) + (WITH_CLIENT if with_client else BARE)
    done = subprocess.run([sys.executable, "-c", script, json.dumps(_config(cluster, **extra))],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cluster(shared_cluster_factory: Any) -> Cluster:
    """One initialized cluster for the module's tests: each writes keys of its own and
    none stops a brick."""
    made: Cluster = shared_cluster_factory(bricks=3, replication=3, partitions=4)
    return made


@pytest_twisted.ensureDeferred
async def test_a_put_is_read_back_with_its_version(cluster: Cluster) -> None:
    assert run_asyncio(cluster, """
        async def main(c, cfg):
            version = await c.put(b"a-put-is", b"v1")
            got = await c.get(b"a-put-is")
            return [version, got.value.decode(), got.version]
        """) == [1, "v1", 1]


@pytest_twisted.ensureDeferred
async def test_create_of_an_existing_key_raises_exists_and_keeps_the_value(
        cluster: Cluster) -> None:
    assert run_asyncio(cluster, """
        async def main(c, cfg):
            await c.create(b"create-of-an", b"first")
            try:
                await c.create(b"create-of-an", b"second")
            except errors.Exists:
                return (await c.get(b"create-of-an")).value.decode()
            return "no error"
        """) == "first"


@pytest_twisted.ensureDeferred
async def test_compare_and_put_at_a_stale_version_raises_version_mismatch(
        cluster: Cluster) -> None:
    assert run_asyncio(cluster, """
        async def main(c, cfg):
            v1 = await c.put(b"compare-and-put", b"a")
            v2 = await c.compare_and_put(b"compare-and-put", b"b", expected_version=v1)
            try:
                await c.compare_and_put(b"compare-and-put", b"c", expected_version=v1)
            except errors.VersionMismatch:
                got = await c.get(b"compare-and-put")
                return [v2, got.value.decode(), got.version]
            return "no error"
        """) == [2, "b", 2]


@pytest_twisted.ensureDeferred
async def test_remove_leaves_no_value_and_a_higher_version(cluster: Cluster) -> None:
    assert run_asyncio(cluster, """
        async def main(c, cfg):
            await c.put(b"remove-leaves-no", b"v")
            removed = await c.remove(b"remove-leaves-no")
            got = await c.get(b"remove-leaves-no")
            return [removed, got.value, got.version]
        """) == [2, None, 2]


@pytest_twisted.ensureDeferred
async def test_concurrent_gets_with_gather_each_return_their_own_key(
        cluster: Cluster) -> None:
    assert run_asyncio(cluster, """
        async def main(c, cfg):
            keys = [b"concurrent-gets-with-%d" % i for i in range(50)]
            await asyncio.gather(*(c.put(k, k.upper()) for k in keys))
            got = await asyncio.gather(*(c.get(k) for k in keys))
            return all(g.value == k.upper() for g, k in zip(got, keys))
        """) is True


@pytest_twisted.ensureDeferred
async def test_a_wrong_secret_fails_connect_with_authentication_failed(
        cluster: Cluster) -> None:
    assert run_asyncio(cluster, """
        async def main(_, cfg):
            try:
                async with connect(cfg):
                    return "connected"
            except errors.DDSError as e:
                return type(e).__name__
        """, with_client=False, secret=b"not the client secret".hex()) \
        == "AuthenticationFailed"


@pytest_twisted.ensureDeferred
async def test_a_host_name_seed_is_resolved_without_a_reactor_thread_pool(
        cluster: Cluster) -> None:
    seeds = [s.replace("127.0.0.1", "localhost") for s in cluster.seeds]
    assert seeds != cluster.seeds
    assert run_asyncio(cluster, """
        async def main(c, cfg):
            return await c.put(b"a-host-name", b"v")
        """, seeds=seeds) == 1


@pytest_twisted.ensureDeferred
async def test_two_clients_on_one_loop_share_one_reactor_which_the_last_close_removes(
        cluster: Cluster) -> None:
    assert run_asyncio(cluster, """
        from dds.lib import aio

        async def main(_, cfg):
            a = await connect(cfg)
            b = await connect(cfg)
            shared = a.client.reactor is b.client.reactor
            await a.put(b"two-clients-on", b"from a")
            seen = (await b.get(b"two-clients-on")).value.decode()
            await a.close()
            after_one = asyncio.get_running_loop() in aio._shared
            await b.close()
            after_both = asyncio.get_running_loop() in aio._shared
            return [shared, seen, after_one, after_both]
        """, with_client=False) == [True, "from a", True, False]


@pytest_twisted.ensureDeferred
async def test_a_cancelled_put_raises_cancelled_error_and_may_still_be_applied(
        cluster: Cluster) -> None:
    """Cancellation is not a failure that undoes the write: the put runs on, and is
    applied; the caller was told neither "done" nor "nothing was applied"."""
    assert run_asyncio(cluster, """
        async def main(c, cfg):
            task = asyncio.ensure_future(c.put(b"a-cancelled-put", b"cancelled"))
            await asyncio.sleep(0)        # the put is on the wire
            task.cancel()
            try:
                await task
                outcome = "returned"
            except asyncio.CancelledError:
                outcome = "cancelled"
            for _ in range(100):
                got = await c.get(b"a-cancelled-put")
                if got.version:
                    break
                await asyncio.sleep(0.05)
            return [outcome, got.value.decode() if got.value else None, got.version]
        """) == ["cancelled", "cancelled", 1]


@pytest_twisted.ensureDeferred
async def test_the_late_outcome_of_a_cancelled_put_is_logged_with_its_version(
        cluster: Cluster) -> None:
    assert run_asyncio(cluster, """
        from twisted.logger import formatEvent, globalLogPublisher

        async def main(c, cfg):
            lines = []
            globalLogPublisher.addObserver(lambda e: lines.append(formatEvent(e)))
            task = asyncio.ensure_future(c.put(b"the-late-outcome", b"v"))
            await asyncio.sleep(0)
            task.cancel()
            for _ in range(100):
                if any("cancelled put" in line for line in lines):
                    break
                await asyncio.sleep(0.05)
            return [line for line in lines if "cancelled put" in line]
        """) == ["a cancelled put was applied after all: version 1"]


@pytest_twisted.ensureDeferred
async def test_a_client_is_refused_on_an_event_loop_other_than_its_own(
        cluster: Cluster) -> None:
    assert run_asyncio(cluster, """
        async def main(_, cfg):
            c = await connect(cfg)
            try:                          # another loop, in a thread of its own
                await asyncio.to_thread(asyncio.run, c.get(b"a-client-is"))
                outcome = "ran"
            except RuntimeError as e:
                outcome = str(e)
            await c.close()
            return outcome
        """, with_client=False) == \
        "an AsyncDDSClient is used on the event loop it was made on"


@pytest_twisted.ensureDeferred
async def test_an_asyncio_program_installs_no_global_twisted_reactor(
        cluster: Cluster) -> None:
    await cluster.init(reactor)
    assert run_asyncio(cluster, """
        async def main(c, cfg):
            await c.put(b"k", b"v")
            return "twisted.internet.reactor" in sys.modules
        """) is False


@pytest.fixture
def tls_cluster(cluster_factory: Any) -> Cluster:
    made: Cluster = cluster_factory(bricks=3, replication=3, partitions=4, tls=True)
    return made


@pytest_twisted.ensureDeferred
async def test_reads_and_writes_run_over_mutual_tls(tls_cluster: Cluster) -> None:
    await tls_cluster.init(reactor)
    assert run_asyncio(tls_cluster, """
        async def main(c, cfg):
            version = await c.put(b"k", b"over tls")
            got = await c.get(b"k")
            return [version, got.value.decode()]
        """) == [1, "over tls"]
