"""Roles on real bricks (DESIGN §10): each connection proves one role, and a brick refuses
every request outside it with a clear error, a metric and a log line, applying nothing."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from dds.auth import Credentials
from dds.connect import open_connection
from dds.errors import AuthenticationFailed, PermissionDenied
from dds.rpc import RPCProtocol

from tests.harness.cluster import CLUSTER, Cluster


async def _connect(cluster: Cluster, role: str, brick: str = "b1",
                   credentials: Credentials | None = None) -> RPCProtocol:
    return await open_connection(reactor, "127.0.0.1", cluster.brick(brick).port,
                                 node_id=f"test-{role}", cluster=CLUSTER,
                                 credentials=credentials or cluster.credentials(role),
                                 max_frame=1 << 20)


@pytest.fixture(scope="module")
def cluster(shared_cluster_factory: Any) -> Cluster:
    """One initialized cluster for the module's tests: each is refused something or
    writes a key of its own, none stops a brick, and metrics and log lines are checked
    as what the test itself added."""
    made: Cluster = shared_cluster_factory(bricks=3, replication=3, partitions=4)
    return made


@pytest_twisted.ensureDeferred
async def test_a_client_may_read_and_fetch_the_map(cluster: Cluster) -> None:
    conn = await _connect(cluster, "client")
    try:
        assert conn.peer_role == "client"
        reply = await conn.call("map_get", {}, timeout=10)
        assert reply["map"]
    finally:
        conn.close()


@pytest.mark.parametrize("mtype, body", [
    ("status", {}),
    ("txns", {}),
    ("failpoint", {"name": "x", "action": "off"}),
    ("lease", {"holder": "b2", "rgs": ["rg0"]}),
    ("gossip", {"digest": []}),
    ("journal_read", {}),
])
@pytest_twisted.ensureDeferred
async def test_a_client_is_refused_admin_and_peer_requests(cluster: Cluster, mtype: str,
                                                           body: dict[str, Any]) -> None:
    before = cluster.metric("b1", "requests_denied_total")
    logged = len(cluster.brick("b1").log_events())
    conn = await _connect(cluster, "client")
    try:
        with pytest.raises(PermissionDenied, match=f"'{mtype}' is not allowed for the "
                                                   "client role"):
            await conn.call(mtype, body, timeout=10)
    finally:
        conn.close()
    assert cluster.metric("b1", "requests_denied_total") == before + 1
    assert any(str(e.get("msg", "")).startswith(f"refused {mtype} from test-client")
               for e in cluster.brick("b1").log_events()[logged:])


@pytest_twisted.ensureDeferred
async def test_an_admin_is_refused_peer_requests(cluster: Cluster) -> None:
    conn = await _connect(cluster, "admin")
    try:
        assert (await conn.call("status", {}, timeout=10))["id"] == "b1"
        with pytest.raises(PermissionDenied, match="not allowed for the admin role"):
            await conn.call("lease", {"holder": "b2", "rgs": ["rg0"]}, timeout=10)
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_a_client_may_ask_for_an_exclusion_but_not_to_readmit(cluster: Cluster) -> None:
    conn = await _connect(cluster, "client")
    try:
        rg = (await conn.call("map_get", {}, timeout=10))["map"]
        record = next(r for r in rg if r[0] == "rg")
        from dds.records import record_from_wire
        rec = record_from_wire(record)
        with pytest.raises(PermissionDenied, match="a client may only ask for an exclusion"):
            await conn.call("rg_change", {"rg": rec.name, "version": rec.version,
                                          "fp": rec.fp, "member": "b2",
                                          "state": "active"}, timeout=10)
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_a_record_pushed_by_a_client_changes_no_brick(cluster: Cluster) -> None:
    """The forged-record attack: rg0 at a higher version listing no partitions, pushed with
    the client role's credentials, is a hint the bricks check with their peers."""
    conn = await _connect(cluster, "client")
    try:
        before = await conn.call("map_get", {}, timeout=10)
        rg = next(r for r in before["map"] if r[0] == "rg")
        forged = [rg[0], rg[1], rg[2] + 1, rg[3], []]
        reply = await conn.call("map_push", {"records": [forged]}, timeout=10)
        assert reply["adopted"] == 0 and reply["hint"] is True
        after = await conn.call("map_get", {}, timeout=10)
    finally:
        conn.close()
    assert after["map"] == before["map"]


@pytest_twisted.ensureDeferred
async def test_the_client_secret_does_not_prove_the_admin_role(cluster: Cluster) -> None:
    client_secret = cluster.secret.encode()
    failures = cluster.metric("b1", "auth_failures_total")
    logged = len(cluster.brick("b1").log_events())
    with pytest.raises(AuthenticationFailed, match="wrong shared secret for the admin role"):
        await _connect(cluster, "admin", credentials=Credentials.shared("admin",
                                                                        client_secret))
    with pytest.raises(AuthenticationFailed, match="wrong shared secret for the brick role"):
        await _connect(cluster, "brick", credentials=Credentials.shared("brick",
                                                                        client_secret))
    assert cluster.metric("b1", "auth_failures_total") >= failures + 2
    # The claimed id of a peer that failed is never logged: only its address.
    events = cluster.brick("b1").log_events()[logged:]
    assert not any("test-admin" in str(e) or "test-brick" in str(e) for e in events)


@pytest_twisted.ensureDeferred
async def test_a_brick_keeps_its_data_and_logs_to_its_owner(cluster: Cluster) -> None:
    """Keys and values are not for other users of the host: 0700 directories, 0600 files
    (partition files, transaction log, map, log file)."""
    client = await cluster.client(reactor)
    try:
        await client.put(b"private", b"value")
    finally:
        await client.close()
    data = cluster.brick("b1").data_dir
    paths = [data, *data.rglob("*")]
    assert any(p.suffix == ".sqlite" for p in paths)
    assert any(p.name.startswith("txlog") for p in paths)
    exposed = [f"{p} {p.stat().st_mode & 0o777:04o}" for p in paths
               if p.stat().st_mode & 0o077]
    assert exposed == []
