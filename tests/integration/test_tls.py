"""Mutual TLS on real bricks (DESIGN §10): certificates from the cluster CA name the
cluster, the role and the id; anything else fails the handshake with an error that says
what is wrong, is counted, and reaches no handler."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from dds import tls
from dds.auth import Credentials
from dds.connect import open_connection
from dds.errors import AuthenticationFailed, DDSError, PermissionDenied
from dds.rpc import RPCProtocol

from tests.harness.cluster import CLUSTER, Cluster


async def _connect(cluster: Cluster, credentials: Credentials,
                   brick: str = "b1") -> RPCProtocol:
    return await open_connection(reactor, "127.0.0.1", cluster.brick(brick).port,
                                 node_id="test", cluster=CLUSTER, credentials=credentials,
                                 max_frame=1 << 20, timeout=10.0)


def _files(cluster: Cluster, role: str, name: str, *, issuer: str = "cluster",
           cluster_name: str = CLUSTER, now: datetime.datetime | None = None,
           days: int = 30) -> Credentials:
    """Credentials made by hand (no checks on load): a certificate for ``role`` ``name``
    from the cluster CA or from another one, for any cluster, valid from ``now``."""
    folder = cluster.root / "tls"
    ca_key, ca_cert = tls.load_ca(folder / "ca.key", folder / "ca.crt")
    if issuer != "cluster":
        ca_key, ca_cert = tls.make_ca(cluster_name, 30)
    key, cert = tls.issue(ca_key, ca_cert, cluster_name, role, name, days, now=now)
    out = cluster.root / f"hand-{name}"
    out.mkdir(mode=0o700, exist_ok=True)
    tls.write_key(out / "k.pem", key, True)
    tls.write_cert(out / "c.pem", cert, True)
    trusted = tls.load_ca(folder / "ca.key", folder / "ca.crt")[1]
    files = tls.TLSFiles(trusted, cert, key, tls.identity_of(cert),
                         tls.TLSPaths(folder / "ca.crt", out / "c.pem", out / "k.pem"))
    return Credentials(role, {}, files)


@pytest.fixture(scope="module")
def cluster(shared_cluster_factory: Any) -> Cluster:
    """One initialized TLS cluster for the module's tests that only connect, are refused
    and write a key of their own; metrics are checked as what the test itself added."""
    made: Cluster = shared_cluster_factory(bricks=3, replication=3, partitions=4, tls=True)
    return made


@pytest_twisted.ensureDeferred
async def test_reads_and_writes_run_over_mutual_tls(cluster: Cluster) -> None:
    client = await cluster.client(reactor)
    try:
        assert await client.put(b"k", b"over tls") == 1
        assert (await client.get(b"k")).value == b"over tls"
    finally:
        await client.close()
    conn = await _connect(cluster, cluster.credentials("admin"))
    try:
        status = await conn.call("status", {}, timeout=10)
        assert conn.peer_id == "b1" and conn.peer_role == "admin"
        assert status["auth"]["mode"] == "tls"
        assert status["auth"]["cert_expires_in_days"] > 800
    finally:
        conn.close()
    assert cluster.metric("b1", "tls_cert_expiry_seconds") > 800 * 86400


@pytest_twisted.ensureDeferred
async def test_a_plain_client_on_a_tls_brick_is_told_to_use_tls(cluster: Cluster) -> None:
    before = cluster.metric("b1", "tls_plaintext_refused_total")
    with pytest.raises(DDSError, match="this brick requires TLS"):
        await _connect(cluster, Credentials.shared("client", b"x" * 40))
    assert cluster.metric("b1", "tls_plaintext_refused_total") == before + 1


@pytest_twisted.ensureDeferred
async def test_a_tls_client_on_a_plain_brick_is_told_the_brick_does_not_speak_tls(
        cluster_factory: Any) -> None:
    tls_cluster: Cluster = cluster_factory(bricks=1, replication=1, partitions=1, tls=True)
    plain: Cluster = cluster_factory(bricks=1, replication=1, partitions=1)
    with pytest.raises(AuthenticationFailed, match="does not speak TLS"):
        await _connect(plain, tls_cluster.credentials("client"))
    assert plain.metric("b1", "handshake_failures_total") >= 1


@pytest_twisted.ensureDeferred
async def test_a_certificate_from_another_ca_is_refused(cluster: Cluster) -> None:
    stranger = _files(cluster, "client", "stranger", issuer="other")
    before = cluster.metric("b1", "handshake_failures_total")
    with pytest.raises(AuthenticationFailed, match="TLS handshake failed"):
        await _connect(cluster, stranger)
    assert cluster.metric("b1", "handshake_failures_total") >= before + 1


@pytest_twisted.ensureDeferred
async def test_an_expired_certificate_is_refused(cluster: Cluster) -> None:
    long_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=400)
    expired = _files(cluster, "client", "expired", now=long_ago, days=30)
    before = cluster.metric("b1", "handshake_failures_total")
    with pytest.raises(AuthenticationFailed, match="TLS handshake failed"):
        await _connect(cluster, expired)
    assert cluster.metric("b1", "handshake_failures_total") >= before + 1


@pytest_twisted.ensureDeferred
async def test_a_certificate_for_another_cluster_is_refused(cluster: Cluster) -> None:
    other = _files(cluster, "client", "elsewhere", cluster_name="other")
    before = cluster.metric("b1", "auth_failures_total")
    with pytest.raises(AuthenticationFailed, match="names cluster 'other', not 'dds'"):
        await _connect(cluster, other)
    assert cluster.metric("b1", "auth_failures_total") >= before + 1


@pytest_twisted.ensureDeferred
async def test_a_client_certificate_cannot_claim_the_admin_role(cluster: Cluster) -> None:
    client = cluster.credentials("client")
    claims_admin = Credentials("admin", {}, client.tls)
    with pytest.raises(AuthenticationFailed, match="is for role 'client', not 'admin'"):
        await _connect(cluster, claims_admin)


@pytest_twisted.ensureDeferred
async def test_a_client_certificate_is_refused_admin_and_peer_requests(
        cluster: Cluster) -> None:
    before = cluster.metric("b1", "requests_denied_total")
    conn = await _connect(cluster, cluster.credentials("client"))
    try:
        assert conn.peer_role == "client"
        for mtype, body in (("status", {}), ("lease", {"holder": "b2", "rgs": ["rg0"]})):
            with pytest.raises(PermissionDenied, match=f"'{mtype}' is not allowed"):
                await conn.call(mtype, body, timeout=10)
    finally:
        conn.close()
    assert cluster.metric("b1", "requests_denied_total") == before + 2


def test_a_brick_refuses_to_start_with_a_key_readable_by_others(cluster_factory: Any
                                                                ) -> None:
    cluster: Cluster = cluster_factory(bricks=3, replication=3, partitions=4, tls=True)
    b1 = cluster.brick("b1")
    b1.stop()
    key = cluster.root / "tls" / "b1.key"
    key.chmod(0o644)
    b1.start()
    assert b1.proc is not None
    assert b1.proc.wait(60) == 2
    tail = b1.log_tail()
    assert "b1.key" in tail and "chmod 600" in tail, tail
    key.chmod(0o600)
