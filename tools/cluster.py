"""How the admin tool finds and talks to a cluster: target resolution (seeds, secret,
cluster name; from options, the environment or a local cluster directory) and the
admin-side brick calls (connect, ``map_get``, ``status``, ``ping``)."""

from __future__ import annotations

import os
from collections.abc import Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred

from dds.codec import DEFAULT_MAX_FRAME
from dds.config import ConfigError, load_cluster_config, parse_address
from dds.connect import open_connection
from dds.errors import AuthenticationFailed, DDSError
from dds.maps import ClusterMap
from dds.rpc import RPCProtocol

from dds.tools.runner import AdminError

NODE_ID = "dds-admin"
DEFAULT_LOCAL_DIR = Path(".dds-local")
T = TypeVar("T")

__all__ = ["Target", "resolve_target", "read_secret", "connect_brick", "call_brick",
           "describe_error",
           "fetch_map", "brick_statuses", "gather", "NODE_ID", "DEFAULT_LOCAL_DIR"]


@attrs.frozen
class Target:
    """Where a cluster is and how to authenticate to it."""

    seeds: tuple[tuple[str, int], ...]
    secret: bytes = attrs.field(repr=False)
    cluster: str = "dds"
    #: The local cluster directory the target came from, if any.
    local_dir: Path | None = None


def read_secret(path: str | Path) -> bytes:
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as e:
        raise AdminError(f"cannot read secret file {str(path)!r}: {e.strerror or e}") from None
    if not secret:
        raise AdminError(f"secret file {str(path)!r} is empty")
    return secret


def _secret(secret_file: str | None, fallback: Path | None) -> bytes:
    if secret_file:
        return read_secret(secret_file)
    if os.environ.get("DDS_SECRET"):
        return os.environ["DDS_SECRET"].encode()
    if fallback is not None and fallback.exists():
        return read_secret(fallback)
    raise AdminError("no shared secret: give --secret-file or set DDS_SECRET")


def parse_seeds(text: str) -> tuple[tuple[str, int], ...]:
    try:
        return tuple(parse_address(s.strip()) for s in text.split(",") if s.strip())
    except ConfigError as e:
        raise AdminError(f"--seeds: {e.message}") from None


def resolve_target(seeds: str | None, secret_file: str | None, local: bool,
                   local_dir: Path, cluster: str | None) -> Target:
    """``--seeds`` (with ``--secret-file`` or DDS_SECRET) when given; otherwise the local
    cluster in ``local_dir`` (its ``cluster.toml`` and ``secret``)."""
    if seeds and not local:
        parsed = parse_seeds(seeds)
        if not parsed:
            raise AdminError("--seeds: no address given")
        return Target(parsed, _secret(secret_file, None), cluster or "dds")
    cfg_path = local_dir / "cluster.toml"
    if not cfg_path.exists():
        where = f"no local cluster in {local_dir}" if not local_dir.exists() else \
            f"{local_dir} has no cluster.toml (is the local cluster up?)"
        raise AdminError(f"{where}: run `dds-admin local up` or give --seeds")
    try:
        cfg = load_cluster_config(cfg_path)
    except ConfigError as e:
        raise AdminError(e.message) from None
    addrs = tuple(parse_address(b.address) for b in cfg.bricks)
    return Target(addrs, _secret(secret_file, local_dir / "secret"),
                  cluster or cfg.cluster.name, local_dir)


def describe_error(error: BaseException) -> str:
    """A short reason for an unreachable or refusing brick."""
    if isinstance(error, DDSError):
        text = error.message
        if text.startswith("cannot connect to "):       # drop the repeated address
            text = text.split(": ", 1)[-1]
            if text.isdigit():                          # a bare errno from the endpoint
                text = os.strerror(int(text)).lower()
        if isinstance(error, AuthenticationFailed):
            text = f"handshake refused: {text}"
        return text
    return f"{error.__class__.__name__}: {error}"


async def connect_brick(reactor: Any, host: str, port: int, target: Target,
                        timeout: float = 5.0) -> RPCProtocol:
    return await open_connection(reactor, host, port, node_id=NODE_ID, cluster=target.cluster,
                                 secret=target.secret, max_frame=DEFAULT_MAX_FRAME,
                                 timeout=timeout)


async def gather(items: Iterable[Coroutine[Any, Any, T] | Deferred[T]]
                 ) -> list[T | BaseException]:
    """Run awaitables concurrently; each result or the exception it raised, in order."""
    deferreds: list[Deferred[T]] = [ensureDeferred(i) for i in items]
    results: list[tuple[bool, Any]] = await DeferredList(deferreds, consumeErrors=True)
    return [value if ok else value.value for ok, value in results]


async def fetch_map(reactor: Any, target: Target, timeout: float = 5.0
                    ) -> tuple[ClusterMap, str]:
    """The map held by the first seed that answers, and that seed's address."""
    problems = []
    for host, port in target.seeds:
        where = f"{host}:{port}"
        try:
            conn = await connect_brick(reactor, host, port, target, timeout)
            try:
                reply = await conn.call("map_get", {}, timeout=timeout)
            finally:
                conn.close()
            cmap = ClusterMap.from_wire(reply["map"])
        except (DDSError, ValueError, KeyError) as e:
            problems.append(f"seed {where} does not answer: {describe_error(e)}")
            continue
        if not len(cmap):
            problems.append(f"seed {where} has no map yet (run `dds-admin init`)")
            continue
        return cmap, where
    raise AdminError(*(problems or ["no seeds given"]))


async def call_brick(reactor: Any, host: str, port: int, target: Target, mtype: str,
                     body: dict[str, Any], timeout: float,
                     call_timeout: float | None = None) -> dict[str, Any]:
    """One request to one brick on a connection of its own; the reply carries the peer's
    id as ``_peer_id`` (so callers can tell a brick answering under another id)."""
    conn = await connect_brick(reactor, host, port, target, timeout)
    try:
        reply: dict[str, Any] = await conn.call(
            mtype, body, timeout=timeout if call_timeout is None else call_timeout)
        reply["_peer_id"] = conn.peer_id
        return reply
    finally:
        conn.close()


async def _status_of(reactor: Any, host: str, port: int, target: Target,
                     timeout: float) -> dict[str, Any]:
    return await call_brick(reactor, host, port, target, "status", {}, timeout)


async def brick_statuses(reactor: Any, addresses: Sequence[tuple[str, str, int]],
                         target: Target, timeout: float = 5.0
                         ) -> dict[str, dict[str, Any] | BaseException]:
    """``status`` of each ``(brick id, host, port)``: the reply, or the exception."""
    results = await gather(_status_of(reactor, h, p, target, timeout)
                           for _b, h, p in addresses)
    return {b: r for (b, _h, _p), r in zip(addresses, results)}
