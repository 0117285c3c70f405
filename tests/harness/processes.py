"""Real brick processes on loopback for integration and fault tests.

Each brick runs ``python -m dds.bricks.main`` with its own config, data directory and log
file: forked from the harness's pre-warmed interpreter (``tests/harness/zygote.py``), or
exec'd (``exec_path``, or when the environment changed in more than ``DDS_*``).  The first start binds port 0 and reads the chosen ports from the brick's
``ready.json``; restarts reuse the same RPC port, because the map names it.  Waiting is
always polling a condition with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from dds.tools import credfiles

from tests.harness.zygote import ZygoteChild, zygote

READY_TIMEOUT_S = 30.0

#: Brick processes started by this process so far, and how many of them were exec'd
#: rather than forked by the zygote (``tests.harness.timing`` reports both).
starts = 0
exec_starts = 0
#: Wall seconds spent in ``BrickProcess.stop`` so far: a brick stopped while a client of
#: this (blocked) process still holds a COMMIT waits out its shutdown grace (5 s).
stop_seconds = 0.0


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class BrickProcess:
    def __init__(self, brick_id: str, root: Path, cluster: str = "dds",
                 durability: str = "disk", extra: str = "",
                 brick_settings: str = "", tls: bool = False,
                 auth_settings: str = "", exec_path: bool = False) -> None:
        """A brick under ``root/brick_id``, authenticating with the per-role secrets in
        ``root/secrets`` (made if missing: ``dds.tools.credfiles``), or with ``tls`` a
        certificate from the CA in ``root/tls``.  ``auth_settings`` go in ``[auth]``.
        The process is forked from the harness's pre-warmed interpreter
        (``tests/harness/zygote.py``), or with ``exec_path`` exec'd as an operator starts
        it: tests of the daemon's own start use that."""
        self.id = brick_id
        self.exec_path = exec_path
        credfiles.write_role_secrets(root)
        if tls:
            credfiles.write_tls(root, cluster, [brick_id])
        self.dir = root / brick_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / "brick.log"
        self.config_path = self.dir / "brick.toml"
        self.config_path.write_text(
            f'[brick]\nid = "{brick_id}"\nhost = "127.0.0.1"\nport = 0\nhttp_port = 0\n'
            f'stream_port = 0\n'
            f'data_dir = "data"\ndurability = "{durability}"\nallow_failpoints = true\n'
            f'{brick_settings}'
            f'[cluster]\nname = "{cluster}"\n'
            + credfiles.auth_toml(root, brick_id, tls) + auth_settings +
            f'[log]\nformat = "json"\nlevel = "info"\n{extra}')
        self.proc: subprocess.Popen[bytes] | ZygoteChild | None = None
        self.port = 0
        self.http_port: int | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        global starts, exec_starts
        starts += 1
        ready = self.data_dir / "ready.json"
        ready.unlink(missing_ok=True)
        args = [sys.executable, "-m", "dds.bricks.main", "--config", str(self.config_path)]
        if self.port:
            args += ["--set", f"brick.port={self.port}"]
        env = dict(os.environ)
        if not self.exec_path and zygote().usable(env):
            self.proc = zygote().spawn(args, self.dir, self.log_path, env)
            return
        exec_starts += 1
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.dir, start_new_session=True)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        ready = self.data_dir / "ready.json"

        def is_ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"brick {self.id} exited with {self.proc.returncode}; "
                                   f"log:\n{self.log_tail()}")
            return ready.exists()
        wait_until(is_ready, timeout, f"brick {self.id} to serve")
        info = json.loads(ready.read_text())
        self.port = info["port"]
        self.http_port = info["http_port"]
        self.stream_port: int | None = info.get("stream_port")

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Stop the process and reap it; returns its exit code."""
        return stop_all([self], sig, timeout)[0]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_events(self) -> list[dict[str, object]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def stop_all(bricks: list[BrickProcess], sig: int = signal.SIGTERM,
             timeout: float = 20.0) -> list[int]:
    """Signal every brick, then reap each; their exit codes.  Stopped together, bricks
    that each wait out their shutdown grace (a transaction still prepared: 5 s) wait it
    at the same time.  Raises ``TimeoutExpired`` (after killing the rest) for a brick
    still running ``timeout`` seconds after its signal."""
    global stop_seconds
    began = time.monotonic()
    try:
        for b in bricks:
            if b.proc is not None and b.proc.poll() is None:
                b.proc.send_signal(sig)
        codes = []
        for b in bricks:
            if b.proc is None:
                codes.append(0)
                continue
            try:
                codes.append(b.proc.wait(max(0.0, began + timeout - time.monotonic())))
            except subprocess.TimeoutExpired:
                for other in bricks:
                    if other.proc is not None and other.proc.poll() is None:
                        other.proc.kill()
                        other.proc.wait(timeout)
                raise
        return codes
    finally:
        stop_seconds += time.monotonic() - began
