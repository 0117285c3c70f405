"""``dds-admin bench move`` end to end, small: it builds its own throwaway 6-brick cluster,
moves a preloaded partition from one replica group to the other under writers, prints one
JSON object with the issue's figures and leaves no process behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ADMIN = Path(sys.executable).with_name("dds-admin")
TIMEOUT_S = 60      # the run itself takes ~7 s; the limit only catches a hang

REQUIRED = ("move_s", "max_write_pause_ms", "throughput_ratio", "put_ops_s", "p99_put_ms",
            "baseline_put_ops_s", "baseline_max_write_pause_ms", "baseline_p99_put_ms",
            "after_put_ops_s", "source_fence_s", "bytes_copied", "partition_bytes")


def test_bench_move_smoke(tmp_path: Path) -> None:
    argv = [str(ADMIN)] if ADMIN.exists() else [sys.executable, "-m", "dds.tools.admin"]
    work = tmp_path / "cluster"
    env = {k: v for k, v in os.environ.items() if k != "DDS_SECRET"}
    result = subprocess.run(
        argv + ["bench", "move", "--keys", "20000", "--clients", "4", "--json",
                "--baseline-s", "1", "--dir", str(work)],
        capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    for key in REQUIRED:
        value = report[key]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
        assert value > 0, (key, value)
    assert report["keys"] == 20000 and report["clients"] == 4
    # Three target members, each a whole copy of the partition's file.
    assert report["bytes_copied"] >= 3 * (report["partition_bytes"] // 2)
    assert report["write_errors"] == 0, report["write_error_codes"]
    assert report["replicas_identical"] is True
    assert report["source_dropped"] is True, report["source_still_holds"]
    # Nothing is journaled from the fence to the cut-over (no fsyncs while writes wait),
    # nor after it but the outcome (repair decides by the records).
    assert [s["step"] for s in report["steps"]] == ["incoming", "copied", "cutover-in"]
    for flag in ("pause_target_met", "throughput_target_met"):
        assert isinstance(report[flag], bool)
    # Every brick it started has stopped: none still owns its log file.
    for brick in ("b1", "b2", "b3", "b4", "b5", "b6"):
        log = work / brick / "brick.log"
        assert log.exists()
        assert "stopped cleanly" in log.read_text(), brick
