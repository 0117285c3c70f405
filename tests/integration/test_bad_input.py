"""Bad input against real processes: clear errors, nothing applied, no daemon crash."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import pytest_twisted
from twisted.internet import reactor

from dds.errors import (AuthenticationFailed, DDSError, KeyTooLarge, Unavailable,
                        ValueTooLarge)
from dds.connect import open_connection
from dds.lib import DDSClient

from tests.harness.cluster import CLUSTER, Cluster


def _raw_connection(port: int) -> socket.socket:
    """A TCP connection that has read the brick's HELLO (so the brick is mid-handshake)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    header = s.recv(4, socket.MSG_WAITALL)
    s.recv(int.from_bytes(header, "big"), socket.MSG_WAITALL)
    return s


def _read_frame(s: socket.socket) -> list[Any]:
    n = int.from_bytes(s.recv(4, socket.MSG_WAITALL), "big")
    return msgpack.unpackb(s.recv(n, socket.MSG_WAITALL), raw=False)


@pytest.fixture(scope="module")
def cluster(shared_cluster_factory: Any) -> Cluster:
    """One initialized cluster for the module's tests whose bad input must change
    nothing: each writes keys of its own and checks metrics as its own deltas."""
    made: Cluster = shared_cluster_factory(bricks=3, replication=3, partitions=4)
    return made


@pytest_twisted.ensureDeferred
async def test_garbage_frames_get_an_error_and_the_brick_keeps_serving(cluster: Cluster
                                                                       ) -> None:
    malformed = cluster.metric("b1", "frames_malformed_total")
    s = _raw_connection(cluster.brick("b1").port)
    garbage = b"\xc1\xc1not msgpack"
    s.sendall(len(garbage).to_bytes(4, "big") + garbage)
    mtype, _rid, body = _read_frame(s)
    assert mtype == "err" and body["code"] == "protocol"
    assert "undecodable frame" in body["msg"] or "malformed" in body["msg"]
    s.close()
    client = await cluster.client(reactor)
    assert await client.put(b"still", b"serving") == 1
    assert cluster.metric("b1", "frames_malformed_total") >= malformed + 1
    await client.close()


@pytest_twisted.ensureDeferred
async def test_an_oversize_frame_is_refused_before_it_is_read(cluster: Cluster) -> None:
    oversize = cluster.metric("b2", "frames_oversize_total")
    s = _raw_connection(cluster.brick("b2").port)
    s.sendall((64 << 20).to_bytes(4, "big") + b"x" * 1000)
    mtype, _rid, body = _read_frame(s)
    assert mtype == "err" and "exceeds the limit" in body["msg"]
    assert s.recv(1) == b""      # then the brick hangs up
    assert cluster.brick("b2").alive()
    assert cluster.metric("b2", "frames_oversize_total") >= oversize + 1


@pytest_twisted.ensureDeferred
async def test_a_wrong_secret_is_refused_with_a_clear_error(cluster: Cluster) -> None:
    failures = cluster.metric("b1", "handshake_failures_total")
    with pytest.raises(AuthenticationFailed) as info:
        await DDSClient.connect(reactor, cluster.seeds[:1], cluster=CLUSTER,
                                secret=b"not-the-secret")
    assert "wrong shared secret" in str(info.value)
    assert info.value.retryable is False          # retrying cannot fix a wrong secret
    with pytest.raises(AuthenticationFailed, match="wrong shared secret"):
        await open_connection(reactor, "127.0.0.1", cluster.brick("b1").port,
                              node_id="intruder", cluster=CLUSTER, secret=b"not-the-secret",
                              max_frame=1 << 20)
    assert all(b.alive() for b in cluster.bricks)
    assert cluster.metric("b1", "handshake_failures_total") >= failures + 1


@pytest_twisted.ensureDeferred
async def test_a_brick_address_that_does_not_answer_is_named(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]        # bound, never listening: connection refused
        with pytest.raises(Unavailable, match=f"127.0.0.1:{port}"):
            await DDSClient.connect(reactor, [f"127.0.0.1:{port}"], cluster=CLUSTER,
                                    secret=b"s", timeout=2.0)


@pytest_twisted.ensureDeferred
async def test_oversize_keys_and_values_fail_before_any_io(cluster: Cluster) -> None:
    client = await cluster.client(reactor)
    prepares = [cluster.metric(b.id, "requests_total", type="prepare")
                for b in cluster.bricks]
    with pytest.raises(KeyTooLarge, match="1025 bytes exceeds the limit of 1024"):
        await client.put(b"k" * 1025, b"v")
    with pytest.raises(ValueTooLarge, match="exceeds the limit"):
        await client.put(b"oversize", b"v" * ((1 << 20) + 1))
    assert [cluster.metric(b.id, "requests_total", type="prepare")
            for b in cluster.bricks] == prepares
    assert (await client.get(b"oversize")).version == 0
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_brick_refuses_an_oversize_value_and_applies_nothing(cluster_factory: Any
                                                                     ) -> None:
    cluster = cluster_factory(bricks=3, replication=3, partitions=4)
    await cluster.init(reactor)
    client = await cluster.client(reactor)
    route = client.router.route(client.map, b"big")
    conn = await cluster.admin_connection(reactor, cluster.brick(route.replicas[0].id))
    with pytest.raises(DDSError) as info:
        await conn.call("prepare", {
            "txid": [1, 1], "ts": [1, 1], "key": b"big", "op": "put",
            "value": b"v" * ((1 << 20) + 1), "expected_version": None, "timeout_ms": 1000,
            **route.ref()})
    assert isinstance(info.value, ValueTooLarge)
    assert (await client.get(b"big")).version == 0
    status = await conn.call("status", {})
    assert status["prepared"] == 0
    conn.close()
    await client.close()


def test_an_unknown_config_key_stops_the_brick_with_the_setting_named(tmp_path: Path) -> None:
    cfg = tmp_path / "brick.toml"
    cfg.write_text('[brick]\nid = "b1"\ndurabilty = "disk"\n')
    proc = subprocess.run([sys.executable, "-m", "dds.bricks.main", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "brick.durabilty: unknown setting" in proc.stderr
    assert "did you mean 'durability'" in proc.stderr


@pytest_twisted.ensureDeferred
async def test_the_blocking_client_works_without_a_reactor(cluster: Cluster,
                                                           tmp_path: Path) -> None:
    script = tmp_path / "blocking.py"
    script.write_text(
        "import sys\n"
        "from dds.lib import BlockingDDSClient\n"
        "from dds.errors import Exists\n"
        "with BlockingDDSClient(sys.argv[1].split(','), cluster='dds',"
        " secret=sys.argv[2]) as c:\n"
        "    v = c.put(b'blocking', b'works')\n"
        "    r = c.get(b'blocking')\n"
        "    try:\n"
        "        c.create(b'blocking', b'again')\n"
        "    except Exists as e:\n"
        "        print('exists:', e)\n"
        "    print(v, r.value.decode(), r.version)\n")
    proc = subprocess.run([sys.executable, str(script), ",".join(cluster.seeds),
                           cluster.secret], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["exists: key exists (version 1)", "1 works 1"]


def test_a_brick_whose_port_is_taken_exits_naming_the_address(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "brick.toml"
        cfg.write_text(f'[brick]\nid = "b1"\nport = {port}\nhttp_port = -1\n'
                       'stream_port = 0\n')
        env = {**os.environ, **{f"DDS_{r.upper()}_SECRET": f"{r}-".ljust(40, "s")
                                for r in ("brick", "admin", "client")}}
        proc = subprocess.run([sys.executable, "-m", "dds.bricks.main", "--config", str(cfg)],
                              capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1
    assert f"127.0.0.1:{port}" in proc.stderr and "Address already in use" in proc.stderr


def _rss_bytes(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for process {pid}")


@pytest.mark.parametrize("tls", [False, True], ids=["secret", "tls"])
@pytest_twisted.ensureDeferred
async def test_a_client_that_reads_no_reply_costs_the_brick_bounded_memory(
        cluster_factory: Any, tls: bool) -> None:
    """Issue 13: an authenticated client pipelining gets of a 1 MiB value and reading no
    reply grew a brick by over a gigabyte, the replies piling up in its buffers.  The
    brick now stops reading from a connection whose replies are not being consumed
    (``limits.max_unsent_bytes``) and goes on when they are; other clients are served
    meanwhile.  Also under TLS, whose transport hands pause and resume to TCP's."""
    cluster = cluster_factory(bricks=3, replication=3, partitions=4, tls=tls)
    await cluster.init(reactor)
    client = await cluster.client(reactor)
    key, value, n = b"big", os.urandom(1 << 20), 500
    assert await client.put(key, value) == 1
    route = client.router.route(client.map, key)
    brick = cluster.brick(route.replicas[0].id)
    hog = await open_connection(reactor, "127.0.0.1", brick.port, node_id="hog",
                                cluster=CLUSTER, credentials=cluster.credentials("client"),
                                max_frame=16 << 20)
    assert hog.transport is not None
    hog.transport.pauseProducing()          # read nothing from now on
    before = _rss_bytes(brick.pid)
    body = {"key": key, **route.ref()}
    replies = [hog.call("get", body) for _ in range(n)]
    # Wait until the brick stopped reading from the hog (then its memory stops growing).
    deadline = time.monotonic() + 30.0
    while cluster.metric(brick.id, "paused_connections") != 1:
        assert time.monotonic() < deadline, "the brick never stopped reading from the hog"
        await _pause(0.05)
    grown = _rss_bytes(brick.pid) - before
    assert grown < 200 << 20, f"the brick grew by {grown >> 20} MiB"
    assert cluster.metric(brick.id, "connections_paused_total") >= 1
    assert cluster.metric(brick.id, "paused_connections") == 1
    # Other clients are still served, by the same brick.
    other = await open_connection(reactor, "127.0.0.1", brick.port, node_id="other",
                                  cluster=CLUSTER, credentials=cluster.credentials("client"),
                                  max_frame=16 << 20)
    assert (await other.call("get", body, timeout=10.0))["value"] == value
    other.close()
    # Once the client reads again, every reply arrives: nothing was dropped.
    hog.transport.resumeProducing()
    results = [await d for d in replies]
    assert all(r["value"] == value for r in results)
    assert cluster.metric(brick.id, "paused_connections") == 0
    hog.close()
    await client.close()


async def _pause(seconds: float) -> None:
    """The interval between two polls of a condition (never a wait for a result)."""
    from twisted.internet.task import deferLater
    await deferLater(reactor, seconds, lambda: None)
