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

from dds.auth import Credentials, check_secret, read_secret_file, secret_env
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


def _as_credentials(value: Credentials | bytes | str) -> Credentials:
    """A bare secret is the admin role's (the short form tests and tools use)."""
    if isinstance(value, Credentials):
        return value
    return Credentials.shared("admin", value)


@attrs.frozen
class Target:
    """Where a cluster is and how to authenticate to it (as the admin role)."""

    seeds: tuple[tuple[str, int], ...]
    credentials: Credentials = attrs.field(converter=_as_credentials, repr=False)
    cluster: str = "dds"
    #: The local cluster directory the target came from, if any.
    local_dir: Path | None = None


def read_secret(path: str | Path) -> bytes:
    """A role's secret from a file that only its owner may read (as a brick checks)."""
    try:
        return read_secret_file(Path(path), "secret file")
    except ConfigError as e:
        raise AdminError(e.message) from None


#: TLS files given on the command line or in the environment (``TLSOptions``).
TLSOptions = tuple[str, str, str]


def _credentials(secret_file: str | None, tls: TLSOptions | None, fallback: Path | None,
                 cluster: str) -> Credentials:
    """The admin role's credentials: TLS files, ``--secret-file``, DDS_ADMIN_SECRET, or
    the local cluster's (its ``tls/`` directory or its admin secret)."""
    if tls is not None:
        return _tls_credentials(*tls, cluster=cluster)
    if secret_file:
        return Credentials.shared("admin", read_secret(secret_file))
    env = secret_env("admin")
    if os.environ.get(env):
        try:
            secret = check_secret(os.environ[env].encode(), env)
        except ConfigError as e:
            raise AdminError(e.message) from None
        return Credentials.shared("admin", secret)
    if fallback is not None:
        local_tls = fallback / "tls"
        if (local_tls / "admin.crt").exists():
            return _tls_credentials(str(local_tls / "ca.crt"), str(local_tls / "admin.crt"),
                                    str(local_tls / "admin.key"), cluster=cluster)
        if (fallback / "secrets" / "admin").exists():
            return Credentials.shared("admin", read_secret(fallback / "secrets" / "admin"))
    hint = " (DDS_SECRET, one secret for every role, is no longer read)" \
        if os.environ.get("DDS_SECRET") else ""
    raise AdminError("no admin credentials: give --secret-file (the admin role's secret) or"
                     f" set {env}, or --ca-file/--cert-file/--key-file for TLS{hint}")


def _tls_credentials(ca: str, cert: str, key: str, *, cluster: str) -> Credentials:
    from dds.tls import load_tls_files
    try:
        files = load_tls_files(ca, cert, key, cluster=cluster, role="admin")
    except ConfigError as e:
        raise AdminError(e.message) from None
    return Credentials("admin", {}, files)


def parse_seeds(text: str) -> tuple[tuple[str, int], ...]:
    try:
        return tuple(parse_address(s.strip()) for s in text.split(",") if s.strip())
    except ConfigError as e:
        raise AdminError(f"--seeds: {e.message}") from None


def resolve_target(seeds: str | None, secret_file: str | None, local: bool,
                   local_dir: Path, cluster: str | None,
                   tls: TLSOptions | None = None) -> Target:
    """``--seeds`` (with ``--secret-file``, DDS_ADMIN_SECRET or TLS files) when given;
    otherwise the local cluster in ``local_dir`` (its ``cluster.toml`` and credentials)."""
    if seeds and not local:
        parsed = parse_seeds(seeds)
        if not parsed:
            raise AdminError("--seeds: no address given")
        name = cluster or "dds"
        return Target(parsed, _credentials(secret_file, tls, None, name), name)
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
    name = cluster or cfg.cluster.name
    return Target(addrs, _credentials(secret_file, tls, local_dir, name), name, local_dir)


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
                                 credentials=target.credentials, max_frame=DEFAULT_MAX_FRAME,
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
