"""The twistd face: ``twistd -n dds-brick --config …`` run by the virtualenv's twistd from
a directory outside the repository, logging as the brick's ``[log]`` section says."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.processes import BrickProcess, wait_until

TWISTD = Path(sys.executable).with_name("twistd")
START_TIMEOUT_S = 60.0


def brick_config(root: Path, log: str) -> BrickProcess:
    """A brick's directory and config (no process: twistd runs it) with ``log`` as the
    ``[log]`` section's extra lines; the harness writes format json, level info."""
    return BrickProcess("b1", root, extra=log)


def twistd(config: Path, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([str(TWISTD), "-n", "--pidfile=", "dds-brick", "--config",
                             str(config)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory with nothing of the repository in it."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    return cwd


def run_until_ready(brick: BrickProcess, cwd: Path) -> Iterator[subprocess.Popen[str]]:
    proc = twistd(brick.config_path, cwd)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"twistd exited {proc.returncode}:\n{out}\n{err}")
            return (brick.data_dir / "ready.json").exists()
        wait_until(ready, START_TIMEOUT_S, "the twistd brick to serve")
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def stopped(proc: subprocess.Popen[str], brick: BrickProcess) -> tuple[str, str]:
    """SIGTERM; twistd stops the brick cleanly (it removes its ready file last), then
    exits by the signal it stopped for, as twistd does."""
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert not (brick.data_dir / "ready.json").exists(), "not a clean stop"
    return out, err


def test_twistd_finds_the_plugin_from_any_directory(elsewhere: Path) -> None:
    result = subprocess.run([str(TWISTD), "--help"], cwd=elsewhere, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "dds-brick" in result.stdout and "A DDS storage brick" in result.stdout


def test_twistd_brick_logs_to_log_file_in_log_format(tmp_path: Path, elsewhere: Path) -> None:
    brick = brick_config(tmp_path / "cluster", 'file = "twistd-brick.log"\n')
    log_file = brick.dir / "twistd-brick.log"
    for proc in run_until_ready(brick, elsewhere):
        out, _err = stopped(proc, brick)
        lines = log_file.read_text().splitlines()
        events = [json.loads(line) for line in lines]          # every line is JSON
        text = " ".join(str(e) for e in events)
        assert "runs under twistd" in text and "serving on" in text
        assert "serving on" not in out       # twistd's own output got none of it


def test_twistd_brick_honours_log_level(tmp_path: Path, elsewhere: Path) -> None:
    brick = brick_config(tmp_path / "cluster", 'file = "twistd-brick.log"\n')
    brick.config_path.write_text(brick.config_path.read_text().replace(
        'level = "info"', 'level = "error"'))
    for proc in run_until_ready(brick, elsewhere):
        stopped(proc, brick)
        assert "serving on" not in (brick.dir / "twistd-brick.log").read_text()


def test_twistd_brick_logs_text_format_to_stdout_without_log_file(
        tmp_path: Path, elsewhere: Path) -> None:
    brick = brick_config(tmp_path / "cluster", "")
    brick.config_path.write_text(brick.config_path.read_text().replace(
        'format = "json"', 'format = "text"'))
    for proc in run_until_ready(brick, elsewhere):
        out, _err = stopped(proc, brick)
        serving = [line for line in out.splitlines() if "serving on" in line]
        assert serving and not serving[0].lstrip().startswith("{")


def test_twistd_refuses_an_unopenable_log_file_with_exit_2(tmp_path: Path,
                                                          elsewhere: Path) -> None:
    brick = brick_config(tmp_path / "cluster", 'file = "no-such-dir/brick.log"\n')
    proc = twistd(brick.config_path, elsewhere)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, out + err
    assert "log.file: cannot open" in err and "Traceback" not in err + out
