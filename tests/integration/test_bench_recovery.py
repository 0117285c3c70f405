"""``dds-admin bench recovery`` end to end, small: it builds its own throwaway cluster,
re-copies the partition to a brick twice (default and full lease) under writers, prints
one JSON object and leaves no process behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ADMIN = Path(sys.executable).with_name("dds-admin")
TIMEOUT_S = 120     # the run itself takes ~10 s; the limit only catches a hang

REQUIRED = ("copy_s", "copy_mb_s", "max_write_pause_ms", "full_lease_copy_s",
            "full_lease_max_write_pause_ms", "total_s", "full_lease_total_s",
            "baseline_max_write_pause_ms", "baseline_p99_put_ms",
            "full_lease_baseline_max_write_pause_ms")


def test_bench_recovery_smoke(tmp_path: Path) -> None:
    argv = [str(ADMIN)] if ADMIN.exists() else [sys.executable, "-m", "dds.tools.admin"]
    work = tmp_path / "cluster"
    env = {k: v for k, v in os.environ.items() if k != "DDS_SECRET"}
    result = subprocess.run(
        argv + ["bench", "recovery", "--keys", "20000", "--clients", "4", "--json",
                "--baseline-s", "1", "--dir", str(work)],
        capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    for key in REQUIRED:
        value = report[key]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
        assert value > 0, (key, value)
    assert report["keys"] == 20000 and report["clients"] == 4
    assert report["modes"]["default"]["bytes_total"] >= report["partition_bytes"] // 2
    assert report["modes"]["default"]["attempts"] >= 1
    assert report["replicas_identical"] is True
    assert isinstance(report["pause_target_met"], bool)
    # Every brick it started has stopped: none still owns its log file.
    for brick in ("b1", "b2", "b3"):
        log = work / brick / "brick.log"
        assert log.exists()
        assert "stopped cleanly" in log.read_text(), brick
