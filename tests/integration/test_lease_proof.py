"""The proof that the pause scenario can fail (issue 5): with the lease check on reads
switched off (``brick.unsafe_ignore_read_lease``), a paused-then-resumed brick serves a
stale read, and the linearizability checker catches it; with normal settings the same
scenario passes the checker.

Scenario (3 bricks, replication 3, one partition, lease 1 s, gossip every 60 s):

1. client A puts ``k = old`` (v1); client C (created now, never writes) knows the route
   of ``k`` by record v1 and holds a connection to b3;
2. b3 is stopped (SIGSTOP); A puts ``k = new``: b3 does not answer the PREPARE, so A has
   it excluded (b1 and b2 wait out their lease grants to b3, about one lease), and the
   put commits on b1 and b2 as v2;
3. *while b3 is still stopped*, C sends its ``get k`` (route v1) to b3; then b3 is
   resumed (SIGCONT) and C awaits the answer.

Why it is deterministic: C's request is already in b3's socket when b3 resumes, so b3's
first reactor turn reads it together with whatever else queued up while it was stopped
(lease requests, A's late PREPARE and ABORT, a ping), and none of those changes b3's
map: the record change excluding b3 is not sent to the excluded member, clients push
records only to a brick that answered StaleMap, and map gossip (which would bring
record v2) runs only every 60 s.  So b3 answers by record v1, and the only thing that
decides the answer is the lease check: b3's lease ran out during the pause (its
validity is counted on the clock, no timer needs to fire), so normally it refuses
(NotServing, recorded as a failed read); with the check off it reads its own replica,
which never got the v2 commit, and returns ``old`` after ``new`` was acknowledged.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from dds.errors import DDSError
from tests.harness.aio import call
from tests.harness.cluster import Cluster
from tests.harness.writers import make_cluster
from tests.verify.history import HistoryRecorder
from tests.verify.linearizability import check_linearizable

LEASE_MS = 1000
GOSSIP_MS = 60_000
KEY = b"k"


@pytest.fixture(params=[False, True], ids=["lease_checked", "unsafe_ignore_read_lease"])
def lease_cluster(request: Any, tmp_path: Path) -> Iterator[tuple[Cluster, bool]]:
    unsafe: bool = request.param
    cluster = make_cluster(tmp_path / "cluster", bricks=3, replication=3, partitions=1,
                           timeouts={"lease_ms": LEASE_MS, "gossip_interval_ms": GOSSIP_MS},
                           brick_settings={"unsafe_ignore_read_lease": unsafe})
    try:
        cluster.start()
        yield cluster, unsafe
    finally:
        cluster.stop()


async def _pause_scenario(cluster: Cluster) -> tuple[list[Any], Any]:
    """Runs the scenario; returns the recorded operations and C's reply (or error)."""
    a = await cluster.client(reactor, timeout=10.0)
    c = await cluster.client(reactor, timeout=10.0)
    hist_a, hist_c = HistoryRecorder(1), HistoryRecorder(2)
    b3 = cluster.brick("b3")

    h = hist_a.invoke("put", KEY, b"old")
    hist_a.complete(h, "ok", result_version=await a.put(KEY, b"old"))
    route = c.router.route(c.map, KEY)
    assert [b.id for b in route.replicas] == ["b1", "b2", "b3"]
    rec3 = route.replicas[2]
    conn = await c.connections.get(rec3.address, rec3.port)   # C's own connection to b3
    assert await conn.call("get", route.request(KEY), timeout=5.0) == \
        {"value": b"old", "version": 1}

    b3.send_signal(signal.SIGSTOP)
    try:
        h = hist_a.invoke("put", KEY, b"new")
        hist_a.complete(h, "ok", result_version=await a.put(KEY, b"new"))
        assert "b3" not in a.router.route(a.map, KEY).rg.active_members
        assert c.router.route(c.map, KEY).rg.version == route.rg.version  # C: still v1
        h = hist_c.invoke("get", KEY)
        reply = conn.call("get", route.request(KEY), timeout=10.0)     # queued at b3
    finally:
        b3.send_signal(signal.SIGCONT)
    outcome: Any
    try:
        outcome = await reply
    except DDSError as e:
        outcome = e
        hist_c.complete(h, "fail", error=f"{e.code}: {e.message}")
    else:
        hist_c.complete(h, "ok", result_value=outcome["value"],
                        result_version=outcome["version"])
    status = await call(cluster, b3, "status", {})
    assert status["members"]["rg0"] == "active"    # b3 still had record v1 when it answered
    await a.close()
    await c.close()
    return hist_a.ops() + hist_c.ops(), outcome


@pytest_twisted.ensureDeferred
async def test_a_read_sent_to_a_paused_brick_is_linearizable_only_with_the_lease_check(
        lease_cluster: tuple[Cluster, bool]) -> None:
    cluster, unsafe = lease_cluster
    await cluster.init(reactor)
    t0 = time.monotonic()
    ops, outcome = await _pause_scenario(cluster)
    result = check_linearizable(ops)
    if not unsafe:
        assert isinstance(outcome, DDSError) and outcome.code == "not_serving", outcome
        assert result.ok, [v.message for v in result.violations]
    else:
        assert outcome == {"value": b"old", "version": 1}, outcome
        assert not result.ok, "the checker missed the stale read"
        assert [(v.key, v.kind) for v in result.violations] == [(KEY, "not_linearizable")]
    assert time.monotonic() - t0 < 30
