"""The runner's own DDS work, on a reactor in a crochet thread: push the initial map,
read every key back at the end, and compare the replicas of every key.

The final reads go through the library and the proxies like any client's, and are
recorded in a history of their own (process ``FINAL_PROCESS``), so the linearizability
check covers them too.  The replica comparison then reads each key from every replica
directly (no proxy, no library routing), until all replicas agree or a deadline passes:
a prepared transaction that outlived its coordinator may hold a key for a while before
termination resolves it, so disagreement is only reported if it lasts.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import crochet
from dds.lib import DDSClient
from twisted.internet.defer import Deferred

from dds.errors import DDSError
from tests.faults.cluster import ProxiedCluster
from tests.harness.aio import eventually
from tests.verify.history import HistoryRecorder

FINAL_PROCESS = 1_000_000
State = tuple[bytes | None, int]
#: key -> the ids of the bricks of its replica group (from the map at the end)
Members = dict[bytes, frozenset[str]]


def _reactor() -> Any:
    from twisted.internet import reactor
    return reactor


@crochet.run_in_reactor
def _init(cluster: ProxiedCluster) -> Deferred[None]:
    return Deferred.fromCoroutine(cluster.init(_reactor()))


def init_cluster(cluster: ProxiedCluster, timeout: float = 30.0) -> None:
    """Push the initial map to every brick."""
    crochet.setup()
    result: Any = _init(cluster)
    result.wait(timeout)


async def _read_all(cluster: ProxiedCluster, keys: list[bytes], history: Path,
                    deadline: float
                    ) -> tuple[dict[bytes, State], dict[bytes, str], Members]:
    client = await DDSClient.connect(_reactor(), cluster.seeds, cluster="dds",
                                     secret=cluster.secret.encode(), timeout=5.0,
                                     node_id="faults-final-reader")
    rec = HistoryRecorder(FINAL_PROCESS, history)
    finals: dict[bytes, State] = {}
    divergent: dict[bytes, str] = {}
    members: Members = {}
    try:
        for key in keys:
            while key not in finals:
                h = rec.invoke("get", key)
                try:
                    r = await client.get(key)
                except DDSError as e:
                    rec.complete(h, "fail", error=f"{e.code}: {e.message}")
                    if time.monotonic() > deadline:
                        # Reported, not raised: the run's other findings still count.
                        divergent[key] = (f"{key!r} unreadable when the final reads "
                                          f"ended: {e.code}: {e.message}")
                        break
                    continue
                rec.complete(h, "ok", r.value, r.version)
                finals[key] = (r.value, r.version)
        for key in keys:
            if key in divergent:
                continue
            members[key] = frozenset(r.id for r in client.router.route(client.map,
                                                                       key).replicas)
            problem = await _compare_replicas(cluster, client, key, deadline)
            if problem:
                divergent[key] = problem
    finally:
        rec.close()
        await client.close()
    return finals, divergent, members


async def _compare_replicas(cluster: ProxiedCluster, client: DDSClient, key: bytes,
                            deadline: float) -> str | None:
    """None once every replica returns the same (value, version); else the last view."""
    view: dict[str, Any] = {}

    async def agree() -> bool:
        route = client.router.route(client.map, key)
        view.clear()
        for rec in route.replicas:
            try:
                conn = await cluster.admin_connection(_reactor(), cluster.brick(rec.id))
                try:
                    r = await conn.call("get", {"key": key, **route.ref()}, timeout=5.0)
                    view[rec.id] = (r["value"], r["version"])
                finally:
                    conn.close()
            except DDSError as e:
                view[rec.id] = f"{e.code}: {e.message}"
        return len(set(map(repr, view.values()))) == 1 and not any(
            isinstance(v, str) for v in view.values())
    try:
        await eventually(agree, max(deadline - time.monotonic(), 0.0),
                         f"the replicas of {key!r} to agree")
    except TimeoutError:
        return f"replicas of {key!r} disagree: {view}"
    return None


@crochet.run_in_reactor
def _final(cluster: ProxiedCluster, keys: list[bytes], history: Path,
           deadline: float
           ) -> Deferred[tuple[dict[bytes, State], dict[bytes, str], Members]]:
    return Deferred.fromCoroutine(_read_all(cluster, keys, history, deadline))


def final_reads(cluster: ProxiedCluster, keys: list[bytes], history: Path,
                timeout: float = 90.0
                ) -> tuple[dict[bytes, State], dict[bytes, str], Members]:
    """Read every key (retrying until ``timeout``); returns the final state per key,
    the keys whose replicas still disagree at the deadline or that no replica could
    serve by then (with why), and each key's RG members."""
    crochet.setup()
    deadline = time.monotonic() + timeout
    result: Any = _final(cluster, keys, history, deadline)   # a crochet EventualResult
    out: tuple[dict[bytes, State], dict[bytes, str], Members] = result.wait(timeout + 30)
    return out
