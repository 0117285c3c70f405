"""A cluster of real brick processes whose map names a fault proxy in front of each brick.

``ProxiedCluster`` extends :class:`tests.harness.cluster.Cluster` without changing it:
every brick gets a fixed RPC port and a fixed proxy port, both chosen *below* the kernel's
ephemeral port range, so that no outgoing connection (the proxies open thousands) can
take a brick's port while the brick is down between a kill and its restart.  The map
(``cluster_config``) and the client seeds name the proxies, so clients and bricks (gossip,
termination queries) all go through them; the harness itself talks to bricks directly.
"""

from __future__ import annotations

import os
import random
import socket
import time
from pathlib import Path
from typing import Any

from dds.config import parse_cluster_config
from tests.faults.proxy import ProxyPool
from tests.harness.cluster import CLUSTER, Cluster
from tests.harness.processes import BrickProcess, wait_until


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(n: int, low: int = 12000) -> list[int]:
    """``n`` ports that are free now, between ``low`` and the ephemeral range."""
    high = _ephemeral_low()
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    out: list[int] = []
    for _ in range(50 * n):
        if len(out) == n:
            break
        port = rng.randrange(low, high)
        if port in out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        out.append(port)
    if len(out) < n:
        raise RuntimeError(f"could not find {n} free ports in [{low}, {high})")
    return out


class ProxiedCluster(Cluster):
    def __init__(self, root: Path, pool: ProxyPool, bricks: int = 6, replication: int = 3,
                 partitions: int = 16, durability: str = "disk", extra: str = "",
                 lease_ms: int | None = None) -> None:
        super().__init__(root, bricks, replication, partitions, durability,
                         lease_ms=lease_ms)
        if extra:   # rewrite the configs with the extra settings
            self.bricks = [BrickProcess(b.id, root, CLUSTER, durability, extra)
                           for b in self.bricks]
        self.pool = pool
        ports = free_ports(2 * bricks)
        for b, port in zip(self.bricks, ports):
            b.port = port
        self.proxy_ports = {b.id: p for b, p in zip(self.bricks, ports[bricks:])}

    def proxy_address(self, brick_id: str) -> str:
        return f"127.0.0.1:{self.proxy_ports[brick_id]}"

    @property
    def seeds(self) -> list[str]:
        return [self.proxy_address(b.id) for b in self.bricks]

    @property
    def brick_ids(self) -> list[str]:
        return [b.id for b in self.bricks]

    def start(self) -> None:
        super().start()
        for b in self.bricks:
            if b.id not in self.pool.proxies:
                self.pool.add(b.id, self.proxy_ports[b.id], b.port)

    def cluster_config(self) -> Any:
        return parse_cluster_config({
            "cluster": {"name": CLUSTER, "replication": self.replication,
                        "partitions": self.partitions},
            "bricks": [{"id": b.id, "address": self.proxy_address(b.id), "host": b.id}
                       for b in self.bricks]})

    def wait_all_ready(self, timeout: float = 30.0) -> None:
        """Wait until every brick that is running has written its ready file."""
        for b in self.bricks:
            if b.alive() and not (b.data_dir / "ready.json").exists():
                b.wait_ready(timeout)

    def terminate_all(self, timeout: float = 30.0) -> dict[str, int]:
        """SIGTERM every brick at once, then reap them; returns the exit codes."""
        running = [b for b in self.bricks if b.alive()]
        for b in running:
            b.proc.terminate()   # type: ignore[union-attr]
        wait_until(lambda: not any(b.alive() for b in running), timeout,
                   "bricks to exit after SIGTERM", interval=0.05)
        return {b.id: b.proc.returncode for b in running}   # type: ignore[union-attr]
