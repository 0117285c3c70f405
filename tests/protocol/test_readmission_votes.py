"""A readmission gives its votes about a second (issue 15): it runs under the recovery
source's write fence, so a voter that is paused or cut off must cost the fence that
second, not the lease-long wait an exclusion's voters need."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dds.errors import Refused

from tests.sim.network import SimCluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SimCluster]:
    c = SimCluster(tmp_path, n=3)
    yield c
    c.close()


def test_a_readmission_with_a_silent_voter_fails_within_a_second_past_the_check(
        cluster: SimCluster) -> None:
    rg = cluster.rg()
    coordinator, voter, target = (cluster.brick(b) for b in rg.active_members)
    cluster.push(rg.with_member_state(target.id, "recovering"))
    cluster.net.pause(voter.id)
    cluster.net.pause(target.id)
    start = cluster.clock.seconds()
    d = coordinator.changes.readmit(rg.name, target.id)
    cluster.net.advance(1.4)
    assert not d.called
    cluster.net.advance(0.2)
    error = cluster.fail_of(d)
    assert isinstance(error, Refused) and voter.id in error.message
    assert cluster.clock.seconds() - start < 1.7
    assert cluster.rg().member_state(target.id) == "recovering"
