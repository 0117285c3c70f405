"""The harness's forked bricks (``tests/harness/zygote.py``) are started, seen and
stopped as exec'd ones are: the same argv, environment, working directory, log file,
session, signals and exit statuses; its forked ``dds-admin`` commands print and exit as
exec'd ones do."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dds import failpoints
from tests.harness.admin import clean_env
from tests.harness.processes import BrickProcess, wait_until
from tests.harness.zygote import PRELOAD, ZygoteChild, zygote

WAIT_S = 60.0


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


@pytest.fixture
def brick(tmp_path: Path) -> Iterator[BrickProcess]:
    b = BrickProcess("b1", tmp_path)
    yield b
    b.stop(signal.SIGKILL)


def test_a_brick_is_forked_by_the_zygote_when_only_dds_variables_differ(
        brick: BrickProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDS_SOMETHING_OF_A_TEST", "1")
    brick.start()
    assert isinstance(brick.proc, ZygoteChild)


def test_another_environment_change_starts_an_exec_d_brick(
        brick: BrickProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    brick.start()
    brick.stop()
    monkeypatch.setenv("PYTHONSOMETHING", "1")
    brick.start()
    assert isinstance(brick.proc, subprocess.Popen)


def test_a_forked_brick_runs_in_its_directory_session_and_log_with_the_brick_argv(
        brick: BrickProcess) -> None:
    brick.start()
    brick.wait_ready(WAIT_S)
    pid = brick.pid
    assert isinstance(brick.proc, ZygoteChild)
    assert os.getsid(pid) == pid and os.getpgid(pid) == pid
    assert os.readlink(f"/proc/{pid}/cwd") == str(brick.dir)
    assert os.readlink(f"/proc/{pid}/fd/1") == str(brick.log_path)
    assert os.readlink(f"/proc/{pid}/fd/2") == str(brick.log_path)
    assert os.readlink(f"/proc/{pid}/fd/0") == os.devnull
    assert _status(pid)["SigBlk"].strip("0") == ""      # no signal left blocked
    started = [e for e in brick.log_events() if "runs on" in str(e.get("msg", ""))]
    assert started and started[0]["brick"] == "b1"


def test_a_forked_brick_reads_dds_failpoints_from_the_test_environment(
        brick: BrickProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """``dds.failpoints`` reads the variable when imported: in the child, not the zygote."""
    monkeypatch.setenv(failpoints.ENV_VAR, "prepare.vote=pause")
    brick.start()
    assert isinstance(brick.proc, ZygoteChild)
    assert brick.proc.wait(WAIT_S) == 2
    assert "DDS_FAILPOINTS: entry 'prepare.vote=pause': unknown failpoint" in \
        brick.log_tail()


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 0), (signal.SIGKILL, -9)])
def test_a_forked_brick_s_exit_status_is_what_popen_reports(
        brick: BrickProcess, sig: int, code: int) -> None:
    brick.start()
    brick.wait_ready(WAIT_S)
    assert brick.stop(sig, timeout=WAIT_S) == code
    assert brick.proc is not None and brick.proc.returncode == code and not brick.alive()


def test_a_stopped_forked_brick_is_alive_and_serves_again_after_sigcont(
        brick: BrickProcess) -> None:
    brick.start()
    brick.wait_ready(WAIT_S)
    brick.send_signal(signal.SIGSTOP)
    wait_until(lambda: _status(brick.pid)["State"].startswith("T"), WAIT_S,
               "the brick to stop")
    assert brick.alive()
    brick.send_signal(signal.SIGCONT)
    import urllib.request
    reply = urllib.request.urlopen(f"http://127.0.0.1:{brick.http_port}/metrics",
                                   timeout=WAIT_S)
    assert reply.status == 200


def test_the_zygote_imports_no_dds_module_and_no_reactor() -> None:
    """What the zygote preloads leaves every DDS module to the brick's own start."""
    code = ("import importlib, sys, json\n"
            f"[importlib.import_module(n) for n in {list(PRELOAD)!r}]\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=WAIT_S, check=True)
    loaded = json.loads(out.stdout)
    assert not [m for m in loaded if m == "dds" or m.startswith("dds.")]
    assert "twisted.internet.reactor" not in loaded


# -- dds-admin commands ----------------------------------------------------------------------

def _exec_d(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=WAIT_S)


@pytest.mark.parametrize("how", ["module", "script"])
def test_a_forked_admin_command_prints_and_exits_as_the_exec_d_one(
        tmp_path: Path, how: str) -> None:
    """``python -m dds.tools.admin`` or the installed ``dds-admin`` script: the same
    stdout (the usage line names the program as the command line did), stderr and exit
    status, for a command that succeeds and one that fails."""
    script = str(Path(sys.executable).with_name("dds-admin"))
    start = [sys.executable, "-m", "dds.tools.admin"] if how == "module" else [script]
    env = clean_env()
    for args in (["--help"], ["status", "--seeds", "127.0.0.1:1", "--secret-file",
                              str(tmp_path / "missing")]):
        forked = zygote().run(start + args, env, WAIT_S, tmp_path)
        exec_d = _exec_d(start + args, tmp_path, env)
        assert (forked.returncode, forked.stdout, forked.stderr) == (
            exec_d.returncode, exec_d.stdout, exec_d.stderr)
    assert "Usage: " + ("python -m dds.tools.admin" if how == "module" else "dds-admin") \
        in zygote().run(start + ["--help"], env, WAIT_S, tmp_path).stdout


def test_a_forked_admin_command_reads_dds_failpoints_from_its_environment(
        tmp_path: Path) -> None:
    """Read when ``dds.failpoints`` is imported: in the child, not the zygote."""
    env = {**clean_env(), failpoints.ENV_VAR: "no.such=crash"}
    done = zygote().run([sys.executable, "-m", "dds.tools.admin", "--help"], env, WAIT_S,
                        tmp_path)
    assert done.returncode != 0 and "no.such" in done.stderr, done


def test_a_forked_admin_command_past_its_timeout_is_killed_and_raises_timeout_expired(
        tmp_path: Path) -> None:
    """A brick that never answers the handshake (a socket nobody accepts on): the
    command waits for it, and is killed at the timeout as ``subprocess.run`` kills."""
    (tmp_path / "secret").write_text("x" * 40)
    (tmp_path / "secret").chmod(0o600)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        argv = [sys.executable, "-m", "dds.tools.admin", "status", "--seeds",
                f"127.0.0.1:{port}", "--secret-file", str(tmp_path / "secret"),
                "--timeout", "600"]
        with pytest.raises(subprocess.TimeoutExpired) as info:
            zygote().run(argv, clean_env(), 1.0, tmp_path)
    assert "error" not in (info.value.stderr or "")     # it waited, it did not fail


def test_a_forked_python_c_program_gets_its_arguments_a_fresh_main_and_its_exit_status(
        tmp_path: Path) -> None:
    code = ("import sys, __main__\n"
            "print(sys.argv, __main__.__dict__.get('PRELOAD', 'fresh'), sys.path[0] == '')\n"
            "sys.exit(int(sys.argv[2]))\n")
    argv = [sys.executable, "-c", code, "an argument", "7"]
    forked = zygote().run(argv, clean_env(), WAIT_S, tmp_path)
    exec_d = _exec_d(argv, tmp_path, clean_env())
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        exec_d.returncode, exec_d.stdout, exec_d.stderr) == (
        7, "['-c', 'an argument', '7'] fresh True\n", "")
