"""``dds-admin`` end to end, with real brick processes on loopback.

Every test uses its own directory under ``tmp_path`` and stops what it started, also
when it fails.  Nothing sleeps for a fixed time: commands wait for conditions themselves
(with deadlines), and the tests poll with deadlines too.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

from dds.tools import procs
from dds.tools.local import Layout, LocalParams, start_bricks, stop
from dds.tools.runner import wait_for

from tests.harness.local import admin, recorded


def status_json(cluster_dir: Path, *extra: str, code: int = 0) -> dict:
    """``status --json``, which must exit ``code`` (0 healthy, 1 not)."""
    result = admin("status", "--dir", str(cluster_dir), "--json", *extra)
    assert result.returncode == code, result.stderr
    return json.loads(result.stdout)


def test_help_runs_as_module() -> None:
    result = admin("--help", via_module=True)
    assert result.returncode == 0
    for command in ("init", "status", "bench", "local"):
        assert command in result.stdout


def test_local_up_status_down(local_cluster: Path) -> None:
    pids = recorded(local_cluster)
    assert len(pids) == 3 and all(procs.is_running(p, s) for p, s in pids)
    secrets = local_cluster / "secrets"
    assert secrets.stat().st_mode & 0o777 == 0o700
    for role in ("brick", "admin", "client"):
        assert (secrets / role).stat().st_mode & 0o777 == 0o600
    assert len({(secrets / role).read_text() for role in ("brick", "admin", "client")}) == 3
    secret = secrets / "admin"
    assert (local_cluster / "cluster.toml").exists()
    for b in ("b1", "b2", "b3"):
        assert (local_cluster / b / "brick.toml").exists()

    report = status_json(local_cluster)
    assert report["ok"] is True
    assert [b["id"] for b in report["bricks"]] == ["b1", "b2", "b3"]
    assert all(b["up"] for b in report["bricks"])
    assert {b["map_fp"] for b in report["bricks"]} == {report["map_fp"]}
    assert report["divergence"] == []
    assert report["partitions"] == 4 and report["replication"] == 3
    assert len(report["rgs"]) == 3
    assert all(len(rg["members"]) == 3 for rg in report["rgs"])
    assert sum(rg["partitions"] for rg in report["rgs"]) == 4

    # The same through explicit seeds and secret, and through `local status`.
    seeds = ",".join(b["address"] for b in report["bricks"][:2])
    by_seed = status_json(local_cluster, "--seeds", seeds, "--secret-file", str(secret))
    assert by_seed["map_fp"] == report["map_fp"]
    local_status = admin("local", "status", "--dir", str(local_cluster), "--json")
    assert json.loads(local_status.stdout)["map_fp"] == report["map_fp"]
    human = admin("status", "--dir", str(local_cluster))
    assert "all bricks up, one map fingerprint" in human.stdout

    down = admin("local", "down", "--dir", str(local_cluster))
    assert down.returncode == 0, down.stderr
    assert down.stdout.count("stopped") == 3
    # `down` waited for the exits itself: nothing of ours is left running.
    assert not any(procs.is_running(p, s) for p, s in pids)
    assert not (local_cluster / "pids.json").exists()
    again = admin("local", "down", "--dir", str(local_cluster), "--purge")
    assert again.returncode == 0 and "no local cluster was running" in again.stdout
    assert not local_cluster.exists()


def test_second_local_up_does_not_start_another(shared_local_cluster: Path) -> None:
    local_cluster = shared_local_cluster
    before = recorded(local_cluster)
    second = admin("local", "up", "--dir", str(local_cluster), "--bricks", "3")
    assert second.returncode == 0, second.stderr
    assert "already running" in second.stdout
    assert recorded(local_cluster) == before
    assert all(procs.is_running(p, s) for p, s in before)


def test_local_up_restarts_stopped_cluster_in_place(local_cluster: Path) -> None:
    fp = status_json(local_cluster)["map_fp"]
    assert admin("local", "down", "--dir", str(local_cluster)).returncode == 0
    # No options: the directory's cluster comes back with its shape, ports and map.
    up = admin("local", "up", "--dir", str(local_cluster))
    assert up.returncode == 0, up.stderr
    report = status_json(local_cluster)
    assert report["ok"] and report["map_fp"] == fp and len(report["bricks"]) == 3
    # Another shape in the same directory is refused.
    other = admin("local", "up", "--dir", str(local_cluster), "--bricks", "4")
    assert other.returncode == 0 and "already running" in other.stdout
    assert admin("local", "down", "--dir", str(local_cluster)).returncode == 0
    other = admin("local", "up", "--dir", str(local_cluster), "--bricks", "4")
    assert other.returncode == 1 and "holds a cluster with bricks 3" in other.stderr


def test_local_up_restarts_a_cluster_after_a_reorganization(local_cluster: Path) -> None:
    """The bricks come back with the map they hold: a split since the first `up` is not
    undone, nor refused as a conflict with the initial plan."""
    split = admin("split", "p2.1", "--dir", str(local_cluster), "--json")
    assert split.returncode == 0, split.stderr
    after = status_json(local_cluster)
    assert after["partitions"] == 5
    assert admin("local", "down", "--dir", str(local_cluster)).returncode == 0
    up = admin("local", "up", "--dir", str(local_cluster))
    assert up.returncode == 0, up.stderr
    assert "restarted with the map the bricks hold" in up.stderr + up.stdout
    again = status_json(local_cluster)
    assert again["ok"] and again["map_fp"] == after["map_fp"]
    assert again["partitions"] == 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_init_refuses_when_a_brick_does_not_answer(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "raw")
    layout.dir.mkdir()
    bricks = start_bricks(layout, LocalParams(bricks=2, replication=2, partitions=4), {})
    admin_secret = layout.secrets / "admin"
    admin_env = {"DDS_ADMIN_SECRET": admin_secret.read_text().strip()}
    try:
        def ready() -> bool:
            for b in bricks:
                try:
                    info = json.loads(layout.ready_file(b.id).read_text())
                except (OSError, ValueError):
                    return False
                if info["pid"] != b.pid:
                    return False
                b.port = info["port"]
            return True
        assert wait_for(ready, 30.0), "bricks did not start"
        dead = free_port()
        config = tmp_path / "cluster.toml"
        entries = [(b.id, b.port) for b in bricks] + [("b3", dead)]
        config.write_text("[cluster]\nreplication = 2\npartitions = 4\n" + "".join(
            f'[[bricks]]\nid = "{bid}"\naddress = "127.0.0.1:{port}"\nhost = "{bid}"\n'
            for bid, port in entries))
        result = admin("init", "--config", str(config), "--secret-file", str(admin_secret))
        assert result.returncode == 1
        assert f"error: brick b3 at 127.0.0.1:{dead} does not answer:" in result.stderr
        assert "nothing was pushed" in result.stderr
        # Nothing reached the bricks that do answer: they still have no map.
        seeds = ",".join(f"127.0.0.1:{b.port}" for b in bricks)
        empty = admin("status", "--seeds", seeds, "--json",
                      env=admin_env)
        assert empty.returncode == 1 and "has no map yet" in empty.stderr

        # A wrong secret is named as such, and also pushes nothing.
        wrong = admin("init", "--config", str(config),
                      env={"DDS_ADMIN_SECRET": "not-the-admin-secret".ljust(40, "x")})
        assert wrong.returncode == 1 and "refused the handshake" in wrong.stderr

        # With the dead brick removed, init succeeds and is idempotent.
        config.write_text(config.read_text().split('[[bricks]]\nid = "b3"')[0])
        for _ in range(2):
            ok = admin("init", "--config", str(config), "--secret-file", str(admin_secret))
            assert ok.returncode == 0, ok.stderr
            assert "initialized cluster dds: 2 bricks" in ok.stdout
        report = json.loads(admin("status", "--seeds", seeds, "--json",
                                  env=admin_env).stdout)
        assert report["ok"] and len(report["bricks"]) == 2
    finally:
        stopped = stop(bricks)
        assert all(s.how in ("stopped", "killed", "not running") for s in stopped)


BENCH_KEYS = ("get_ops_s", "put_ops_s", "get_p50_ms", "get_p99_ms", "put_p50_ms",
              "put_p99_ms", "cpu_us_per_get", "cpu_us_per_put", "floor_rtt_s", "get_ratio",
              "put_ratio", "put_p50_ms_ack_mode", "cpu_us_per_put_ack_mode", "put_p50_ms_c1",
              "put_p50_ms_c1_ack_mode", "put_p50_parallel_to_ack",
              "cpu_per_put_parallel_to_ack", "bounded_get_ops_s")


def test_bench_smoke(shared_local_cluster: Path) -> None:
    result = admin("bench", "--dir", str(shared_local_cluster), "--seconds", "1", "--keys", "200",
                   "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for key in BENCH_KEYS:
        assert report[key] > 0, key
    assert report["keys"] == 200 and report["clients"] == 1     # like the floor's client
    assert report["cpu_includes_all_bricks"] is True
    assert isinstance(report["get_target_met"], bool)
    assert report["get_errors"] == {} and report["put_errors"] == {}


def test_bench_contention_reports_both_modes_and_no_lost_increment(
        shared_local_cluster: Path) -> None:
    result = admin("bench", "--dir", str(shared_local_cluster), "contention", "--seconds", "0.4",
                   "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["cas_lost"] == 0
    for name in ("cas_1key", "cas_10keys"):
        for suffix in ("", "_ack_mode"):
            assert report[f"{name}_ops_s{suffix}"] > 0, name + suffix
            assert report[f"{name}_lost{suffix}"] == 0
            assert report[f"{name}_p99_ms{suffix}"] >= report[f"{name}_p50_ms{suffix}"]


def test_bench_tls_smoke(tmp_path: Path) -> None:
    """`bench --tls` runs the phases on a plain and a TLS cluster it starts itself, and
    reports the ratios it is judged by; it leaves no brick running."""
    result = admin("bench", "--tls", "--rounds", "1", "--seconds", "0.5", "--keys", "200",
                   "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for key in ("tls_get_ratio", "tls_put_ratio", "tls_cpu_us_per_get",
                "plain_cpu_us_per_get", "tls_cpu_us_per_put", "plain_cpu_us_per_put"):
        assert report[key] > 0, key
    assert len(report["tls_get_ratios"]) == 1
    for side in ("plain", "tls"):
        assert report[side]["get_errors"] == {} and report[side]["put_errors"] == {}
    assert "dds-bench-tls-" not in subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                                 text=True).stdout


def test_status_reports_a_stopped_brick(local_cluster: Path) -> None:
    import signal
    pid, started = recorded(local_cluster)[1]
    assert procs.signal_if_ours(pid, started, signal.SIGTERM)
    assert wait_for(lambda: not procs.is_running(pid, started), 20.0)
    report = status_json(local_cluster, code=1)
    assert report["ok"] is False
    down = [b for b in report["bricks"] if not b["up"]]
    assert [b["id"] for b in down] == ["b2"] and down[0]["error"]
    assert all(not m["up"] for rg in report["rgs"] for m in rg["members"]
               if m["brick"] == "b2")
    human = admin("status", "--dir", str(local_cluster))
    assert human.returncode == 1 and "1 brick(s) down: b2" in human.stdout
    # `down` stops the other two and reports b2 as already gone.
    down_run = admin("local", "down", "--dir", str(local_cluster))
    assert "b2 (pid" in down_run.stdout and "not running" in down_run.stdout


def test_divergence_is_flagged() -> None:
    from dds.tools.status import divergence
    same = [["cluster", 1, 10], ["rg/rg0", 2, 20]]
    bricks = [{"id": "b1", "up": True, "map_fp": 1, "digest": same},
              {"id": "b2", "up": True, "map_fp": 1, "digest": same},
              {"id": "b3", "up": False}]
    assert divergence(bricks) == []
    bricks.append({"id": "b4", "up": True, "map_fp": 2,
                   "digest": [["cluster", 1, 10], ["rg/rg0", 2, 99]]})
    problems = divergence(bricks)
    assert "different map fingerprints" in problems[0]
    assert "DIVERGENCE: rg/rg0 v2" in problems[1] and "(b4)" in problems[1]
    # Lagging (an older version) is a different fingerprint, but not a divergence.
    lag = [bricks[0], {"id": "b5", "up": True, "map_fp": 3,
                       "digest": [["cluster", 1, 10], ["rg/rg0", 1, 5]]}]
    assert len(divergence(lag)) == 1
