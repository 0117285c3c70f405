"""Key → partition → replica group → replicas, and the choice of a replica for reads."""

from __future__ import annotations

import random
from typing import AbstractSet, Mapping

from dds.maps import ClusterMap
from dds.partition import PartitionId, key_hash
from dds.records import BrickRecord, RGRecord
from dds.rpc import RPCProtocol


class Route:
    """Where a key lives under one map: what every data request must carry."""

    __slots__ = ("pid", "pid_text", "rg", "replicas", "addresses", "participants", "_ref")

    def __init__(self, pid: PartitionId, rg: RGRecord, replicas: list[BrickRecord]) -> None:
        self.pid = pid
        self.pid_text = str(pid)
        self.rg = rg
        self.replicas = replicas
        self.addresses = [(b.address, b.port) for b in replicas]
        #: The ids a PREPARE names as the transaction's participants (DESIGN §4).
        self.participants = [b.id for b in replicas]
        self._ref = {"pid": self.pid_text, "rg": rg.name, "rg_version": rg.version,
                     "rg_fp": rg.fp}

    def ref(self) -> dict[str, object]:
        """The routing fields of a data request (a fresh dict: callers add to it)."""
        return dict(self._ref)

    def request(self, key: bytes) -> dict[str, object]:
        body = dict(self._ref)
        body["key"] = key
        return body


class Router:
    """Caches one ``Route`` per partition for the current map: routing a key is a hash,
    a trie probe and a dict lookup."""

    def __init__(self) -> None:
        self._map: ClusterMap | None = None
        self._routes: dict[PartitionId, Route] = {}

    def route(self, cmap: ClusterMap, key: bytes) -> Route:
        if cmap is not self._map:
            self._map = cmap
            self._routes = {}
        pid = cmap.trie.lookup_hash(key_hash(key))
        r = self._routes.get(pid)
        if r is None:
            rg = cmap.partition_rg[pid]
            bricks = cmap.bricks
            missing = [b for b in rg.active_members if b not in bricks]
            if missing:     # never route around a member: writes go to all of them
                raise LookupError(f"no brick record for {missing}, members of {rg.name}")
            replicas = [bricks[b] for b in rg.active_members]
            r = self._routes[pid] = Route(pid, rg, replicas)
        return r


def pick_replica(route: Route, exclude: AbstractSet[str],
                 connections: Mapping[tuple[str, int], RPCProtocol],
                 rng: random.Random) -> BrickRecord | None:
    """Least outstanding requests among connected replicas, random tie-break; a replica
    with no connection yet counts as idle.  Every read makes this choice, so it builds
    no list: a tie is broken as it is met, the ``n``-th equally loaded replica replacing
    the choice with probability 1/n (uniform over the ties)."""
    best: BrickRecord | None = None
    best_load = -1
    ties = 0
    for b, addr in zip(route.replicas, route.addresses):
        if exclude and b.id in exclude:
            continue
        conn = connections.get(addr)
        load = conn.outstanding if conn is not None else 0
        if best_load < 0 or load < best_load:
            best, best_load, ties = b, load, 1
        elif load == best_load:
            ties += 1
            if rng.random() * ties < 1.0:
                best = b
    return best
