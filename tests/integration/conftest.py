"""Fixtures for integration tests: real brick processes on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from tests.harness.aio import stop_background
from tests.harness.cluster import Cluster
from tests.harness.local import local_up


@pytest.fixture(autouse=True)
def _background_loops_end_with_their_test() -> Iterator[None]:
    """A test that failed before stopping its background readers or writers
    (``tests.harness.aio.Background``) must not leave them running into later tests."""
    yield
    stop_background()


def _stop_all(made: list[Cluster]) -> None:
    for c in made:
        c.stop()


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[object]:
    made: list[Cluster] = []

    def make(**kw: object) -> Cluster:
        c = Cluster(tmp_path / f"cluster{len(made)}", **kw)  # type: ignore[arg-type]
        made.append(c)
        c.start()
        return c
    yield make
    _stop_all(made)


@pytest.fixture(scope="module")
def shared_cluster_factory(tmp_path_factory: pytest.TempPathFactory
                           ) -> Iterator[Callable[..., Cluster]]:
    """Clusters started and initialized once for all the tests of a module that ask for
    them: starting bricks is most of an integration test's time.  Only for tests that read,
    write keys no other test of the module uses, and look at metrics and log lines as
    deltas from their own start; a test that stops, kills, pauses or reconfigures a brick,
    or changes membership, gets a cluster of its own (``cluster_factory``)."""
    made: list[Cluster] = []

    def make(**kw: object) -> Cluster:
        c = Cluster(tmp_path_factory.mktemp("shared") / f"cluster{len(made)}",
                    **kw)  # type: ignore[arg-type]
        made.append(c)
        c.start()
        pytest_twisted.blockon(Deferred.fromCoroutine(c.init(reactor)))
        return c
    yield make
    _stop_all(made)


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[Path]:
    """A running 3-brick local cluster (replication 3, 4 partitions), ``dds-admin local
    up --dir``; stopped at the end, also when the test failed."""
    with local_up(tmp_path / "cluster", bricks=3, replication=3, partitions=4) as made:
        yield made


@pytest.fixture(scope="module")
def shared_local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``local_cluster`` started once for the tests of a module that ask for it: those
    that only read it (status, dry runs) or write keys of their own and look at deltas
    (benches).  A test that stops a brick, runs ``local down`` or changes the map gets a
    ``local_cluster`` of its own."""
    with local_up(tmp_path_factory.mktemp("shared-local") / "cluster", bricks=3,
                  replication=3, partitions=4) as made:
        yield made
