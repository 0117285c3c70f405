"""What an operator sees of the daemon and the tool themselves: versions, a log file
that logrotate can move, a log file that cannot be opened."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from dds.version import VERSION

from tests.harness.processes import BrickProcess, wait_until


def test_both_commands_say_their_version() -> None:
    for module, name in (("dds.bricks.main", "dds-brick"), ("dds.tools.admin", "dds-admin")):
        out = subprocess.run([sys.executable, "-m", module, "--version"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"{name} {VERSION}"
    assert VERSION != "0+unknown"


def test_a_log_file_that_cannot_be_opened_is_a_one_line_config_error(tmp_path: Path) -> None:
    brick = BrickProcess("b1", tmp_path, extra='file = "no/such/dir/brick.log"\n')
    out = subprocess.run([sys.executable, "-m", "dds.bricks.main", "--config",
                          str(brick.config_path)], capture_output=True, text=True,
                         timeout=60, cwd=brick.dir)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "log.file: cannot open" in lines[0], out.stderr
    assert "no/such/dir/brick.log" in lines[0] and "Traceback" not in out.stderr


def test_sighup_reopens_the_log_file_after_logrotate_moved_it(tmp_path: Path) -> None:
    brick = BrickProcess("b1", tmp_path, extra='file = "own.log"\n', exec_path=True)
    own = brick.dir / "own.log"
    brick.start()
    try:
        brick.wait_ready()
        assert own.exists() and own.stat().st_mode & 0o077 == 0
        os.rename(own, brick.dir / "own.log.1")
        brick.send_signal(signal.SIGHUP)
        wait_until(lambda: own.exists() and "reopened the log file" in own.read_text(),
                   30.0, "the brick to reopen its log file")
        first = json.loads(own.read_text().splitlines()[0])
        assert first["time"].endswith("Z") and first["node"] == "b1"
        assert brick.alive()
    finally:
        assert brick.stop() == 0
