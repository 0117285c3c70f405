"""The throwaway cluster that ``bench recovery`` and ``bench move`` build for
themselves: a directory (temporary, or an empty ``--dir``), a preloaded partition,
brick processes on loopback, and everything stopped again at the end, also on an error
or Ctrl-C; then the bricks' views: who serves, and their log lines as a timeline."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rich.progress import Progress

from dds.tools import ui
from dds.tools.bench.preload import preload_partition

__all__ = ["CLUSTER", "HOST", "READY_TIMEOUT_S", "ThrowawayCluster", "brick_status",
           "log_events", "serves", "throwaway_cluster", "wait_serving"]

HOST = "127.0.0.1"
CLUSTER = "dds"
READY_TIMEOUT_S = 60.0
STATUS_POLL_S = 0.1


class ThrowawayCluster:
    """What one run started (bricks, writer workers, a live display), so that it can be
    stopped whatever happens."""

    def __init__(self, root: Path, kept: bool) -> None:
        from dds.tools import credfiles
        from dds.tools.local import Layout
        self.root = root
        #: Whether the directory stays after the run (``--dir`` or ``--keep``).
        self.kept = kept
        self.layout = Layout(root)
        root.mkdir(parents=True, exist_ok=True)
        credfiles.write_role_secrets(root)
        self.bricks: list[Any] = []          # local.BrickProc
        self.workers: list[Any] = []         # children.Child
        self.progress: Progress | None = None
        self.events: queue.Queue[Any] = queue.Queue()     # from the writer workers

    def role_env(self) -> dict[str, str]:
        """Each role's secret as DDS_<ROLE>_SECRET: bricks read all three from there."""
        from dds.tools import credfiles
        return credfiles.role_env(self.root)

    def admin_secret(self) -> bytes:
        return self.role_env()["DDS_ADMIN_SECRET"].encode()

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.role_env()}

    def preload(self, pid: str, bricks: Iterable[str], keys: int, value_bytes: int,
                key: Callable[[int], bytes] | None = None) -> int:
        """The same preloaded file of ``pid`` for each of ``bricks``; its size."""
        path = self.root / "preload.sqlite"
        t0 = time.monotonic()
        size = preload_partition(path, pid, keys, value_bytes, self, key=key)
        ui.say(f"preloaded {keys:,} keys into {pid}: {size / 1e6:,.1f} MB in "
               f"{time.monotonic() - t0:.1f}s")
        for bid in bricks:
            data = self.layout.brick_dir(bid) / "data"
            data.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, data / f"{pid}.sqlite")
        path.unlink()
        return size

    def spawn_bricks(self, bricks: Iterable[str], lease_ms: int) -> None:
        """Start one ``disk`` brick process per id on a port of its own choosing."""
        from dds.tools import procs
        from dds.tools.local import BrickProc

        for bid in bricks:
            bdir = self.layout.brick_dir(bid)
            (bdir / "data").mkdir(parents=True, exist_ok=True)
            config = bdir / "brick.toml"
            config.write_text(
                f'[brick]\nid = "{bid}"\nhost = "{HOST}"\nport = 0\ndata_dir = "data"\n'
                f'durability = "disk"\nhttp_port = -1\nstream_port = 0\n\n'
                f'[cluster]\nname = "{CLUSTER}"\n\n'
                f'[timeouts]\nlease_ms = {lease_ms}\n\n'
                f'[log]\nfile = "brick.log"\nformat = "json"\n')
            with open(bdir / "brick.log", "ab") as log:
                proc = subprocess.Popen([sys.executable, "-m", "dds.bricks.main",
                                         "--config", str(config)],
                                        stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        cwd=bdir, close_fds=True, env=self.env())
            self.bricks.append(BrickProc(bid, proc.pid, procs.start_time(proc.pid) or 0))

    def cleanup(self) -> None:
        from dds.tools.local import stop
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        for w in self.workers:
            try:
                w.stop(timeout=3.0)
            except Exception:    # noqa: BLE001 -- keep stopping the others
                pass
        self.workers = []
        if self.bricks:
            stop(self.bricks)
            self.bricks = []


@contextlib.contextmanager
def throwaway_cluster(work_dir: Path | None, keep: bool,
                      prefix: str) -> Iterator[ThrowawayCluster]:
    """A cluster in ``work_dir`` (new or empty) or in a new temporary directory, removed
    afterwards unless ``keep``; every process it started is stopped at the end."""
    made_dir = work_dir is None
    root = Path(tempfile.mkdtemp(prefix=prefix)) if work_dir is None \
        else work_dir.absolute()
    if not made_dir:
        root.mkdir(parents=True, exist_ok=True)
        if any(root.iterdir()):
            from dds.tools.runner import AdminError
            raise AdminError(f"{root} is not empty; give an empty or new --dir")
    r = ThrowawayCluster(root, kept=keep or not made_dir)
    try:
        ui.say(f"cluster directory {root}")
        yield r
    finally:
        r.cleanup()
        if made_dir and not keep:
            shutil.rmtree(root, ignore_errors=True)


async def brick_status(conn: Any) -> dict[str, Any]:
    reply: dict[str, Any] = await conn.call("status", {}, timeout=30.0)
    return reply


def serves(st: dict[str, Any], rg: str) -> bool:
    """Whether a brick's status says it serves ``rg``: an active member, not blocked,
    with a valid lease."""
    lease = st.get("leases", {}).get(rg) or {}
    return (st.get("members", {}).get(rg) == "active" and rg not in st["blocked"]
            and lease.get("state") == "valid")


async def wait_serving(reactor: Any, conns: dict[str, Any], rg: str, timeout: float,
                       only: str | None = None) -> None:
    """Until every brick of ``conns`` (or just ``only``) serves ``rg``; AdminError
    naming each one's state after ``timeout``."""
    from dds.tools.runner import AdminError, poll_until

    last: dict[str, Any] = {}

    async def serving() -> bool:
        for bid, conn in conns.items():
            if only is not None and bid != only:
                continue
            last[bid] = s = await brick_status(conn)
            if not serves(s, rg):
                return False
        return True
    if not await poll_until(reactor, serving, timeout, interval=STATUS_POLL_S):
        raise AdminError(f"bricks do not all serve {rg} after {timeout:g}s: " + "; ".join(
            f"{bid}: member {s.get('members', {}).get(rg)}, blocked {s.get('blocked')}, "
            f"lease {(s.get('leases', {}).get(rg) or {}).get('state')}"
            for bid, s in last.items()))


def log_events(log: Path, brick: str, namespaces: tuple[str, ...], wall_a: float,
               wall_b: float) -> list[dict[str, Any]]:
    """The lines of one brick's JSON log whose namespace contains one of
    ``namespaces``, between two wall-clock times: seconds after ``wall_a``, the
    brick, the message (200 characters at most)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if not isinstance(e, dict) or not any(n in str(e.get("ns", "")) for n in namespaces):
            continue
        t = float(e.get("t", 0))
        if wall_a <= t <= wall_b:
            out.append({"at_s": round(t - wall_a, 3), "brick": brick,
                        "msg": str(e.get("msg", ""))[:200]})
    return out
