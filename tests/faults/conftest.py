"""Fixtures for fault tests: a proxied cluster of real bricks, and a nemesis for it.

``proxied_cluster(bricks=4, partitions=8)`` starts bricks behind fault proxies and pushes
the map (whose addresses are the proxies); ``nemesis_for(cluster)`` gives a
:class:`~tests.faults.nemesis.Nemesis` logging to the test's directory.  Everything is
healed, resumed and stopped at teardown.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.cluster import ProxiedCluster
from tests.faults.nemesis import Nemesis
from tests.faults.proxy import ProxyPool


@pytest.fixture
def proxied_cluster(tmp_path: Path) -> Iterator[Callable[..., ProxiedCluster]]:
    from tests.faults.final import init_cluster

    made: list[tuple[ProxiedCluster, ProxyPool]] = []

    def make(**kw: Any) -> ProxiedCluster:
        pool = ProxyPool()
        c = ProxiedCluster(tmp_path / f"cluster{len(made)}", pool, **kw)
        made.append((c, pool))
        c.start()
        init_cluster(c)
        return c
    yield make
    for c, pool in made:
        for b in c.bricks:
            if b.alive():
                b.send_signal(signal.SIGCONT)
        try:
            c.stop()
        finally:
            pool.close()


@pytest.fixture
def nemesis_for(tmp_path: Path) -> Iterator[Callable[[ProxiedCluster], Nemesis]]:
    made: list[Nemesis] = []

    def make(cluster: ProxiedCluster) -> Nemesis:
        n = Nemesis(cluster, tmp_path / f"faults{len(made)}.jsonl")
        made.append(n)
        return n
    yield make
    for n in made:
        n.heal_all()
        n.close()
