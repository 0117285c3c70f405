"""Helpers for tests of the DR site's client side (DESIGN §12): set a cluster's DR
record by hand (what ``dds-admin dr attach`` / ``promote`` push), and the URL of a
cluster as a DR site."""

from __future__ import annotations

import time
from typing import Any

import attrs

from dds.maps import ClusterMap
from dds.records import DRRecord

from tests.harness.aio import eventually
from tests.harness.cluster import CLUSTER, Cluster


def site_url(cluster: Cluster) -> str:
    return "dds://" + ",".join(f"127.0.0.1:{b.port}" for b in cluster.bricks) + \
        f"/{CLUSTER}"


def site_option(cluster: Cluster) -> dict[str, Any]:
    """``dr_site=`` for a client of ``cluster``'s primary."""
    return {"seeds": cluster.seeds, "cluster": CLUSTER,
            "credentials": cluster.credentials("client")}


async def _maps(reactor: Any, cluster: Cluster) -> list[ClusterMap]:
    out = []
    for b in cluster.bricks:
        conn = await cluster.admin_connection(reactor, b)
        try:
            out.append(ClusterMap.from_wire((await conn.call("map_get", {},
                                                             timeout=10))["map"]))
        finally:
            conn.close()
    return out


async def push_dr(reactor: Any, cluster: Cluster, mode: str, **fields: Any) -> DRRecord:
    """Give every brick of ``cluster`` a DR record of ``mode`` with ``fields``, one
    version above the newest any brick holds, and wait until each has adopted it."""
    held = [m.dr for m in await _maps(reactor, cluster)]
    version = max((r.version for r in held if r is not None), default=0) + 1
    rec = DRRecord(version, mode, **fields)
    for b in cluster.bricks:
        conn = await cluster.admin_connection(reactor, b)
        try:
            await conn.call("map_push", {"records": [rec.canonical()]}, timeout=10)
        finally:
            conn.close()

    async def adopted() -> bool:
        return all(m.dr == rec for m in await _maps(reactor, cluster))
    await eventually(adopted, 30.0, f"every brick to adopt {rec}")
    return rec


async def attach(reactor: Any, primary: Cluster, site: Cluster) -> DRRecord:
    """The primary's record with a DR site attached (votes carry ``at``)."""
    return await push_dr(reactor, primary, "primary", site=site_url(site))


async def promote(reactor: Any, site: Cluster, window_s: float,
                  primary_name: str = CLUSTER) -> DRRecord:
    """The DR site's record after ``dr promote``: primary at a new epoch, replay window
    open for ``window_s`` from now."""
    held = [m.dr for m in await _maps(reactor, site)]
    epoch = max((r.epoch for r in held if r is not None), default=0) + 1
    return await push_dr(reactor, site, "primary", epoch=epoch, primary=primary_name,
                         replay_until_ms=int((time.time() + window_s) * 1000))


def evolve(rec: DRRecord, **changes: Any) -> DRRecord:
    return attrs.evolve(rec, **changes)
