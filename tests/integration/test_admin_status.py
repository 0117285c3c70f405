"""``dds-admin status``: its exit status says whether the cluster is healthy, and its
tables name what an operator needs next (partition ids, errors), on a real local cluster."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from dds.tools import procs
from dds.tools.runner import wait_for

from tests.harness.local import admin, recorded


def test_status_exits_zero_on_a_healthy_cluster(shared_local_cluster: Path) -> None:
    for args in (("--json",), ()):
        result = admin("status", "--dir", str(shared_local_cluster), *args)
        assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(admin("status", "--dir", str(shared_local_cluster), "--json"
                           ).stdout)["ok"]


def test_status_exits_one_when_a_brick_is_down(local_cluster: Path) -> None:
    pid, started = recorded(local_cluster)[2]
    assert procs.signal_if_ours(pid, started, signal.SIGKILL)
    assert wait_for(lambda: not procs.is_running(pid, started), 20.0)
    as_json = admin("status", "--dir", str(local_cluster), "--json", "--timeout", "2")
    assert as_json.returncode == 1, as_json.stderr
    report = json.loads(as_json.stdout)          # the report is printed all the same
    assert report["ok"] is False
    human = admin("status", "--dir", str(local_cluster), "--timeout", "2")
    assert human.returncode == 1
    assert "not healthy" in human.stdout and "b3" in human.stdout
    local = admin("local", "status", "--dir", str(local_cluster), "--timeout", "2")
    assert local.returncode == 1


def test_status_exits_one_when_no_seed_answers(local_cluster: Path) -> None:
    assert admin("local", "down", "--dir", str(local_cluster)).returncode == 0
    result = admin("status", "--dir", str(local_cluster), "--timeout", "1")
    assert result.returncode == 1
    assert result.stderr.startswith("error:")


def test_status_table_names_every_partition_id(shared_local_cluster: Path) -> None:
    report = json.loads(admin("status", "--dir", str(shared_local_cluster), "--json").stdout)
    ids = {p for rg in report["rgs"] for p in rg["partition_states"]}
    assert ids == {"p2.0", "p2.1", "p2.2", "p2.3"}
    human = " ".join(admin("status", "--dir", str(shared_local_cluster)).stdout.split())
    assert "partition ids" in human
    for pid in ids:
        assert pid in human
