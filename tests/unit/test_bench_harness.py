"""The benches' shared pieces that have logic of their own: their keys, the CPU time
between two samples, a brick's status read as serving, and the timeline read from a
brick's JSON log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dds.partition import PartitionId
from dds.tools.bench.cpu import cpu_between
from dds.tools.bench.preload import key_of, partition_key
from dds.tools.bench.throwaway import log_events, serves


def test_a_partition_key_routes_to_its_partition() -> None:
    pid = PartitionId(2, 3)
    assert all(pid.owns(partition_key(i, pid)) for i in range(50))


def test_a_partition_key_of_the_whole_key_space_is_the_plain_key() -> None:
    assert partition_key(7, PartitionId(0, 0)) == key_of(7) == b"bench-0000000007"


def test_cpu_between_uses_the_samples_nearest_the_two_instants() -> None:
    samples = [(0.0, {"b1": 1.0}), (1.0, {"b1": 1.5}), (2.0, {"b1": 3.0})]
    assert cpu_between(samples, 0.9, 2.2) == {"b1": 1.5}


def test_cpu_between_no_samples_is_empty() -> None:
    assert cpu_between([], 0.0, 1.0) == {}


SERVING = {"members": {"rg0": "active"}, "blocked": [], "leases": {"rg0": {"state": "valid"}}}


def test_a_brick_serves_an_rg_as_an_active_unblocked_member_with_a_valid_lease() -> None:
    assert serves(SERVING, "rg0")


@pytest.mark.parametrize("change", [{"blocked": ["rg0"]}, {"members": {"rg0": "recovering"}},
                                    {"leases": {}}, {"leases": {"rg0": {"state": "expired"}}}])
def test_a_brick_blocked_not_active_or_without_a_valid_lease_does_not_serve(
        change: dict[str, Any]) -> None:
    assert not serves({**SERVING, **change}, "rg0")


def test_the_timeline_keeps_the_named_namespaces_within_the_times(tmp_path: Path) -> None:
    log = tmp_path / "brick.log"
    lines = [{"t": 100.0, "ns": "dds.recovery", "msg": "too early"},
             {"t": 101.25, "ns": "dds.recovery", "msg": "x" * 300},
             {"t": 101.5, "ns": "dds.gossip", "msg": "another namespace"},
             {"t": 103.0, "ns": "dds.recovery", "msg": "too late"}]
    log.write_text("\n".join(json.dumps(e) for e in lines) + "\nnot json\n")
    events = log_events(log, "b3", ("recovery",), 101.0, 102.0)
    assert events == [{"at_s": 0.25, "brick": "b3", "msg": "x" * 200}]


def test_the_timeline_of_a_missing_log_is_empty(tmp_path: Path) -> None:
    assert log_events(tmp_path / "none.log", "b1", ("recovery",), 0.0, 1.0) == []
