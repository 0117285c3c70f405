"""Fixtures for integration tests: real brick processes on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.harness.cluster import Cluster


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[object]:
    made: list[Cluster] = []

    def make(**kw: object) -> Cluster:
        c = Cluster(tmp_path / f"cluster{len(made)}", **kw)  # type: ignore[arg-type]
        made.append(c)
        c.start()
        return c
    yield make
    for c in made:
        c.stop()
