"""``dds-admin local up|down``: a cluster of bricks on loopback under one directory.

Layout of the directory (``./.dds-local`` by default)::

    secrets/        one shared secret per role: brick, admin, client (mode 0600)
    tls/            with ``--tls``: the cluster CA and a certificate per brick, admin, client
    cluster.toml    the cluster configuration, with the bricks' real addresses
    pids.json       what ``up`` started: brick id, PID, start time, ports
    bN/brick.toml   brick N's configuration; bN/brick.log its log; bN/data its data

The first ``up`` starts bricks on port 0 (the OS picks free ports; each brick writes the
ports it bound to ``data/ready.json``).  A later ``up`` in the same directory restarts
the same bricks on the same ports, so their maps and data stay valid.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from dds.config import ConfigError, load_cluster_config
from dds.messages import Ping

from dds.tools import credfiles, procs
from dds.tools.cluster import Target, connect_brick
from dds.tools.initcmd import InitResult, init_cluster
from dds.tools.runner import AdminError, poll_until, wait_for
from dds.tools.ui import progress, say

__all__ = ["LocalParams", "BrickProc", "Layout", "running", "start_bricks", "local_up",
           "local_down", "purge_dir", "DEFAULTS"]

HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
KILL_TIMEOUT_S = 5.0


@attrs.frozen
class LocalParams:
    bricks: int = 6
    replication: int = 3
    partitions: int = 16
    durability: str = "disk"
    tls: bool = False
    #: The cluster's name (the handshake's): two local clusters side by side, a primary
    #: and its DR site, are told apart by it.
    name: str = "dds"


DEFAULTS = LocalParams()


@attrs.define
class BrickProc:
    id: str
    pid: int
    start_time: int
    port: int = 0
    http_port: int | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


@attrs.frozen
class Layout:
    dir: Path

    @property
    def secrets(self) -> Path:
        return credfiles.secrets_dir(self.dir)

    @property
    def tls(self) -> Path:
        return credfiles.tls_dir(self.dir)

    @property
    def pids(self) -> Path:
        return self.dir / "pids.json"

    @property
    def cluster(self) -> Path:
        return self.dir / "cluster.toml"

    def brick_dir(self, bid: str) -> Path:
        return self.dir / bid

    def ready_file(self, bid: str) -> Path:
        return self.dir / bid / "data" / "ready.json"

    @contextlib.contextmanager
    def lock(self, timeout: float = START_TIMEOUT_S + 30.0) -> Iterator[None]:
        """Exclusive use of the directory by one ``local up``/``down`` at a time; a second
        one waits (with a deadline) and then sees what the first one did."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as f:
            def acquired() -> bool:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
                return True
            if not wait_for(acquired, timeout, interval=0.05):
                raise AdminError(f"another dds-admin is still starting or stopping the "
                                 f"local cluster in {self.dir}")
            yield

    def read_pids(self) -> list[BrickProc]:
        try:
            data = json.loads(self.pids.read_text())
            return [BrickProc(**b) for b in data["bricks"]]
        except FileNotFoundError:
            return []
        except (ValueError, KeyError, TypeError) as e:
            raise AdminError(f"{self.pids}: unreadable ({e}); remove it after checking "
                             "that no brick from this directory is running") from None

    def write_pids(self, bricks: list[BrickProc]) -> None:
        tmp = self.pids.with_suffix(".tmp")
        tmp.write_text(json.dumps({"bricks": [attrs.asdict(b) for b in bricks]}, indent=2))
        os.replace(tmp, self.pids)


def running(layout: Layout) -> list[BrickProc]:
    """The recorded bricks that are still the processes we started."""
    return [b for b in layout.read_pids() if procs.is_running(b.pid, b.start_time)]


# -- configuration files -------------------------------------------------------------------

def _write_credentials(layout: Layout, params: LocalParams) -> None:
    """One secret per role always (the admin tool finds its own there); with ``--tls``
    also a CA and a certificate per brick, admin and client."""
    credfiles.write_role_secrets(layout.dir)
    if params.tls:
        credfiles.write_tls(layout.dir, params.name, [f"b{i}" for i in range(1, params.bricks + 1)])


def _brick_toml(layout: Layout, bid: str, port: int, params: LocalParams) -> str:
    return (f'[brick]\nid = "{bid}"\nhost = "{HOST}"\nport = {port}\ndata_dir = "data"\n'
            f'durability = "{params.durability}"\nhttp_port = 0\nstream_port = 0\n\n'
            f'[cluster]\nname = "{params.name}"\n\n'
            + credfiles.auth_toml(layout.dir, bid, params.tls) +
            '\n[log]\nfile = "brick.log"\nformat = "json"\n')


def _cluster_toml(params: LocalParams, bricks: list[BrickProc]) -> str:
    lines = ["# Written by `dds-admin local up`. Each brick is its own failure domain.",
             "[cluster]", f'name = "{params.name}"', f"replication = {params.replication}",
             f"partitions = {params.partitions}", ""]
    for b in bricks:
        lines += ["[[bricks]]", f'id = "{b.id}"', f'address = "{b.address}"',
                  f'host = "{b.id}"', ""]
    return "\n".join(lines)


def _previous(layout: Layout) -> tuple[LocalParams, dict[str, int]] | None:
    """The parameters and ports of the cluster this directory held before, if any."""
    if not layout.cluster.exists():
        return None
    try:
        cfg = load_cluster_config(layout.cluster)
    except ConfigError as e:
        raise AdminError(e.message) from None
    durability = DEFAULTS.durability
    try:
        first = tomllib.loads((layout.brick_dir(cfg.bricks[0].id) / "brick.toml").read_text())
        durability = str(first["brick"]["durability"])
    except (OSError, ValueError, KeyError):
        pass
    params = LocalParams(len(cfg.bricks), cfg.cluster.replication, cfg.cluster.partitions,
                         durability, (layout.tls / "ca.crt").exists(), cfg.cluster.name)
    return params, {b.id: int(b.address.rsplit(":", 1)[1]) for b in cfg.bricks}


def resolve_params(layout: Layout, given: dict[str, Any]) -> tuple[LocalParams,
                                                                  dict[str, int]]:
    """Explicit options, else the directory's previous cluster, else the defaults.
    A previous cluster of another shape is an error (its data would not fit)."""
    prev = _previous(layout)
    base = prev[0] if prev else DEFAULTS
    params = attrs.evolve(base, **{k: v for k, v in given.items() if v is not None})
    if prev:
        shape = ("bricks", "replication", "partitions", "tls", "name")
        changed = [k for k in shape if getattr(params, k) != getattr(prev[0], k)]
        if changed:
            old = ", ".join(f"{k} {getattr(prev[0], k)}" for k in shape)
            raise AdminError(f"{layout.dir} holds a cluster with {old}; run `dds-admin "
                             f"local down --purge --dir {layout.dir}` first or use "
                             "another --dir")
    if params.replication > params.bricks:
        raise AdminError(f"--replication {params.replication} needs at least as many "
                         f"bricks, got --bricks {params.bricks}")
    return params, (prev[1] if prev else {})


# -- starting and stopping -----------------------------------------------------------------

def _private(path: str, flags: int) -> int:
    """``open``'s opener for files only their owner may read (a brick's log names keys)."""
    return os.open(path, flags, 0o600)


def start_bricks(layout: Layout, params: LocalParams, ports: dict[str, int]
                 ) -> list[BrickProc]:
    """Spawn every brick as a detached process (own session, output to its log), with
    the directory's credentials (made if missing)."""
    _write_credentials(layout, params)
    started: list[BrickProc] = []
    for i in range(1, params.bricks + 1):
        bid = f"b{i}"
        bdir = layout.brick_dir(bid)
        (bdir / "data").mkdir(parents=True, exist_ok=True)
        config = bdir / "brick.toml"
        config.write_text(_brick_toml(layout, bid, ports.get(bid, 0), params))
        layout.ready_file(bid).unlink(missing_ok=True)
        with open(bdir / "brick.log", "ab", opener=_private) as log:
            proc = subprocess.Popen([sys.executable, "-m", "dds.bricks.main", "--config",
                                     str(config)], stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=bdir, close_fds=True)
        started.append(BrickProc(bid, proc.pid, procs.start_time(proc.pid) or 0))
        layout.write_pids(started)      # recorded at once: `down` can always find them
    return started


def _log_tail(layout: Layout, bid: str, lines: int = 4) -> str:
    """The last lines of a brick's log, JSON lines shown as level, message and the last
    line of any traceback."""
    try:
        text = (layout.brick_dir(bid) / "brick.log").read_text(errors="replace")
    except OSError:
        return ""
    out = []
    for line in text.splitlines()[-lines:]:
        try:
            event = json.loads(line)
            shown = f"[{event.get('level')}] {event.get('msg')}"
            if event.get("traceback"):
                shown += " -- " + event["traceback"].strip().splitlines()[-1]
        except (ValueError, AttributeError):
            shown = line
        out.append("    " + shown[:400])
    return "\n".join(out)


async def wait_ready(reactor: Any, layout: Layout, bricks: list[BrickProc],
                     target: Target, timeout: float = START_TIMEOUT_S) -> None:
    """Poll until every brick wrote its ready file and answers a ping."""
    pending = {b.id: b for b in bricks}
    failed: list[str] = []
    with progress() as bar:
        task = bar.add_task("starting bricks", total=len(bricks))

        async def check() -> bool:
            for bid, b in list(pending.items()):
                if not procs.is_running(b.pid, b.start_time):
                    failed.append(f"brick {bid} (pid {b.pid}) exited during start-up; "
                                  f"last lines of {layout.brick_dir(bid) / 'brick.log'}:\n"
                                  + _log_tail(layout, bid))
                    del pending[bid]
                    continue
                try:
                    ready = json.loads(layout.ready_file(bid).read_text())
                except (OSError, ValueError):
                    continue
                if ready.get("pid") != b.pid:
                    continue
                b.port, b.http_port = int(ready["port"]), ready.get("http_port")
                try:
                    conn = await connect_brick(reactor, HOST, b.port, target, timeout=2.0)
                    try:
                        await conn.send(Ping(), timeout=2.0)
                    finally:
                        conn.close()
                except Exception:
                    continue
                del pending[bid]
                bar.advance(task)
            return not pending
        ok = await poll_until(reactor, check, timeout, interval=0.05)
    say(f"{len(bricks) - len(pending)} of {len(bricks)} bricks ready")
    if failed:
        raise AdminError(*failed)
    if not ok:
        raise AdminError(f"bricks not ready after {timeout:g}s: {', '.join(sorted(pending))}",
                         *(f"last lines of {layout.brick_dir(bid) / 'brick.log'}:\n"
                           + _log_tail(layout, bid) for bid in sorted(pending)))


async def _held_map(reactor: Any, bricks: list[BrickProc], target: Target
                    ) -> InitResult | None:
    """The map the restarted bricks already hold (they restart with it: a move, split,
    merge or membership change since the first ``up`` is in it, and the initial plan is
    not), or None when none of them has one yet (the first ``up`` stopped before init)."""
    from dds.tools.cluster import fetch_map
    seeds = Target(tuple((HOST, b.port) for b in bricks), target.credentials,
                   target.cluster, target.local_dir)
    try:
        cmap, _seed = await fetch_map(reactor, seeds)
    except AdminError as e:
        if all("has no map yet" in line for line in e.lines):
            return None
        raise
    return InitResult(cmap, (), {})


async def local_up(reactor: Any, layout: Layout, params: LocalParams,
                   ports: dict[str, int]) -> tuple[list[BrickProc], InitResult]:
    """Start the bricks and wait until they answer; the first time, write cluster.toml
    and init; later, the bricks restart with the map they hold."""
    layout.dir.mkdir(parents=True, exist_ok=True)
    restart = layout.cluster.exists()
    _write_credentials(layout, params)
    target = Target(((HOST, 0),), credfiles.client_credentials(layout.dir, params.name,
                                                                "admin"),
                    params.name, layout.dir)
    bricks = start_bricks(layout, params, ports)
    try:
        await wait_ready(reactor, layout, bricks, target)
        layout.write_pids(bricks)
        held = await _held_map(reactor, bricks, target) if restart else None
        if held is not None:
            say(f"restarted with the map the bricks hold (fp {held.map.fp:#010x})")
            result = held
        else:
            layout.cluster.write_text(_cluster_toml(params, bricks))
            cfg = load_cluster_config(layout.cluster)
            result = await init_cluster(reactor, cfg, target, say=say)
    except BaseException:
        stop(bricks)
        layout.pids.unlink(missing_ok=True)
        raise
    return bricks, result


@attrs.frozen
class Stopped:
    brick: BrickProc
    how: str            # "stopped" | "killed" | "not running" | "still running"
    seconds: float


def stop(bricks: list[BrickProc], timeout: float = STOP_TIMEOUT_S) -> list[Stopped]:
    """SIGTERM the bricks that are still ours, wait for them, SIGKILL after the deadline."""
    t0 = time.monotonic()
    alive = [b for b in bricks if procs.signal_if_ours(b.pid, b.start_time, signal.SIGTERM)]
    done: dict[str, Stopped] = {b.id: Stopped(b, "not running", 0.0)
                                for b in bricks if b not in alive}

    def reap() -> bool:
        for b in alive:
            if b.id not in done and not procs.is_running(b.pid, b.start_time):
                done[b.id] = Stopped(b, how, time.monotonic() - t0)
        return len(done) == len(bricks)

    how = "stopped"
    if not wait_for(reap, timeout):
        how = "killed"
        for b in alive:
            if b.id not in done:
                procs.signal_if_ours(b.pid, b.start_time, signal.SIGKILL)
        wait_for(reap, KILL_TIMEOUT_S)
    for b in alive:
        done.setdefault(b.id, Stopped(b, "still running", time.monotonic() - t0))
    return [done[b.id] for b in bricks]


def local_down(layout: Layout, purge: bool) -> list[Stopped]:
    bricks = layout.read_pids()
    result = stop(bricks) if bricks else []
    if any(s.how == "still running" for s in result):
        raise AdminError(*(f"brick {s.brick.id} (pid {s.brick.pid}) did not exit"
                           for s in result if s.how == "still running"))
    layout.pids.unlink(missing_ok=True)
    if purge:
        purge_dir(layout)
    return result


def purge_dir(layout: Layout) -> None:
    """Delete the directory, data included, once none of its bricks is running."""
    if not layout.dir.exists():
        return
    if running(layout):
        raise AdminError(f"bricks of {layout.dir} are still running; not deleting it")
    if not any(p.exists() for p in (layout.secrets, layout.cluster, layout.pids)):
        raise AdminError(f"{layout.dir} does not look like a local cluster directory; "
                         "not deleting it")
    shutil.rmtree(layout.dir)
