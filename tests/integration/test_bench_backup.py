"""``dds-admin bench backup`` end to end, tiny: it builds its throwaway clusters, backs
one up, restores it into new bricks, prints one JSON object with the MB/s of each and
leaves no process behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ADMIN = Path(sys.executable).with_name("dds-admin")
TIMEOUT_S = 180     # the run itself takes seconds; the limit only catches a hang


def test_bench_backup_smoke_reports_both_rates_and_stops_its_bricks(tmp_path: Path) -> None:
    argv = [str(ADMIN)] if ADMIN.exists() else [sys.executable, "-m", "dds.tools.admin"]
    work = tmp_path / "cluster"
    env = {k: v for k, v in os.environ.items() if k != "DDS_SECRET"}
    result = subprocess.run(
        argv + ["bench", "backup", "--keys", "4000", "--value-bytes", "200",
                "--partitions", "2", "--json", "--dir", str(work)],
        capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    for key in ("backup_s", "backup_mb_s", "restore_s", "restore_mb_s", "bytes"):
        assert isinstance(report[key], (int, float)) and report[key] > 0, (key, report[key])
    assert report["partitions"] == 2 and isinstance(report["ok"], bool)
    assert (work / "backup" / "manifest.json").is_file()
    for brick in ("b1", "b2", "b3", "r1", "r2", "r3"):
        assert "stopped cleanly" in (work / brick / "brick.log").read_text(), brick
