"""How the admin tool finds and talks to a cluster: target resolution (seeds, secret,
cluster name; from options, the environment or a local cluster directory) and the
admin-side brick calls: :class:`BrickCaller` for bricks known by id (identity checked,
one timeout policy), :func:`ask` / :func:`call_brick` for one request to an address,
:func:`fetch_map` and :func:`brick_statuses`."""

from __future__ import annotations

import os
from collections.abc import Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred

from dds.auth import Credentials, check_secret, read_secret_file, secret_env
from dds import deferreds
from dds.codec import DEFAULT_MAX_FRAME
from dds.config import ConfigError, format_address, load_cluster_config, parse_address
from dds.connect import ConnectionCache, Opener, open_connection
from dds.errors import AuthenticationFailed, DDSError
from dds.maps import ClusterMap
from dds.messages import MapGet, Message, Status
from dds.replies import StatusReply
from dds.rpc import RPCProtocol

from dds.tools.runner import AdminError

NODE_ID = "dds-admin"
DEFAULT_LOCAL_DIR = Path(".dds-local")
#: The admin tool's timeout policy: seconds to connect to a brick (TCP and handshake)
#: and for one request, unless the caller or the call gives its own.
CALL_TIMEOUT_S = 5.0
T = TypeVar("T")

__all__ = ["Target", "resolve_target", "read_secret", "connect_brick", "ask", "Answer",
           "call_brick", "BrickCaller", "describe_error", "fetch_map",
           "brick_statuses", "gather", "NODE_ID", "DEFAULT_LOCAL_DIR", "CALL_TIMEOUT_S"]


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
                        timeout: float = CALL_TIMEOUT_S) -> RPCProtocol:
    return await open_connection(reactor, host, port, node_id=NODE_ID, cluster=target.cluster,
                                 credentials=target.credentials, max_frame=DEFAULT_MAX_FRAME,
                                 timeout=timeout)


async def gather(items: Iterable[Coroutine[Any, Any, T] | Deferred[T]]
                 ) -> list[T | BaseException]:
    """Run awaitables concurrently; each result or the exception it raised, in order
    (``dds.deferreds.gather``)."""
    results: list[T | BaseException] = await deferreds.gather(items)
    return results


async def fetch_map(reactor: Any, target: Target, timeout: float = CALL_TIMEOUT_S
                    ) -> tuple[ClusterMap, str]:
    """The map held by the first seed that answers, and that seed's address."""
    problems = []
    for host, port in target.seeds:
        where = f"{host}:{port}"
        try:
            cmap = ClusterMap.from_wire(
                (await call_brick(reactor, host, port, target, MapGet(), timeout))["map"])
        except (DDSError, ValueError, KeyError) as e:
            problems.append(f"seed {where} does not answer: {describe_error(e)}")
            continue
        if not len(cmap):
            problems.append(f"seed {where} has no map yet (run `dds-admin init`)")
            continue
        return cmap, where
    raise AdminError(*(problems or ["no seeds given"]))


@attrs.frozen
class Answer:
    """A brick's reply, and the id the brick proved in the handshake (a brick may answer
    at an address under another id than the map says)."""

    reply: dict[str, Any]
    peer: str | None


async def ask(reactor: Any, host: str, port: int, target: Target, msg: Message,
              timeout: float = CALL_TIMEOUT_S, call_timeout: float | None = None) -> Answer:
    """The request ``msg`` to the brick at an address, on a connection of its own: for
    a look at bricks by address (``status``, ``txns``), where the answer says who
    answered.  ``timeout`` for the connection, ``call_timeout`` (default: the same) for
    the reply."""
    conn = await connect_brick(reactor, host, port, target, timeout)
    try:
        reply: dict[str, Any] = await conn.send(
            msg, timeout=timeout if call_timeout is None else call_timeout)
        return Answer(reply, conn.peer_id)
    finally:
        conn.close()


async def call_brick(reactor: Any, host: str, port: int, target: Target, msg: Message,
                     timeout: float = CALL_TIMEOUT_S,
                     call_timeout: float | None = None) -> dict[str, Any]:
    """:func:`ask`'s reply alone, for a caller to whom who answers does not matter."""
    return (await ask(reactor, host, port, target, msg, timeout, call_timeout)).reply


async def brick_statuses(reactor: Any, addresses: Sequence[tuple[str, str, int]],
                         target: Target, timeout: float = CALL_TIMEOUT_S
                         ) -> dict[str, Answer | BaseException]:
    """``status`` of each ``(brick id, host, port)``: the answer, or the exception."""
    results = await gather(ask(reactor, h, p, target, Status(), timeout)
                           for _b, h, p in addresses)
    return {b: r for (b, _h, _p), r in zip(addresses, results)}


class BrickCaller:
    """Requests to bricks by id for one admin command, the one way ``tools/`` calls a
    brick it knows by id.

    - **Identity**: a connection is used only once the handshake proved the brick is the
      one asked for (an :class:`AdminError` otherwise, before anything is sent).
    - **Timeouts**: one policy.  ``timeout`` is each request's deadline unless the call
      gives its own; connecting (TCP and handshake) waits ``connect_timeout``.  Both
      default to :data:`CALL_TIMEOUT_S`.
    - **Connections**: with ``reuse``, one per brick (``dds.connect.ConnectionCache``),
      opened on first use and again after it drops, until :meth:`close`; without, one of
      its own per request (a fresh connection never carries a stale peer over a brick
      restart, and nothing needs closing).
    - **Addresses** are looked up in ``addresses`` at each call (the caller may add
      bricks it learns of); an unknown id is an :class:`AdminError`.  With
      ``name_unreachable``, a brick that cannot be connected to is an
      :class:`AdminError` naming it and its address (for commands that print the
      reason as is); otherwise the ``DDSError`` of the connection attempt.

    ``opener`` replaces ``open_connection`` (unit tests).
    """

    def __init__(self, reactor: Any, target: Target,
                 addresses: dict[str, tuple[str, int]], *,
                 timeout: float = CALL_TIMEOUT_S, connect_timeout: float = CALL_TIMEOUT_S,
                 reuse: bool = True, name_unreachable: bool = False,
                 opener: Opener | None = None) -> None:
        self.reactor = reactor
        self.target = target
        self.addresses = addresses
        self.timeout = timeout
        self.reuse = reuse
        self.name_unreachable = name_unreachable
        self.connect_timeout = connect_timeout
        self._opener: Opener = opener or open_connection
        self._cache: ConnectionCache | None = None

    def _options(self) -> dict[str, Any]:
        return {"node_id": NODE_ID, "cluster": self.target.cluster,
                "credentials": self.target.credentials, "max_frame": DEFAULT_MAX_FRAME,
                "timeout": self.connect_timeout}

    def address(self, brick: str) -> tuple[str, int]:
        where = self.addresses.get(brick)
        if where is None:
            raise AdminError(f"no address for brick {brick!r}")
        return where

    async def connection(self, brick: str) -> RPCProtocol:
        """A connection to ``brick`` proven to be it: the cached one with ``reuse``, else
        a new one (the caller closes it)."""
        host, port = self.address(brick)
        try:
            if not self.reuse:
                conn = await self._opener(self.reactor, host, port, **self._options())
            else:
                if self._cache is None:
                    self._cache = ConnectionCache(self.reactor, self._opener,
                                                  **self._options())
                conn = await self._cache.get(host, port)
        except DDSError as e:
            if self.name_unreachable:
                raise AdminError(f"brick {brick} at {format_address(host, port)} does not "
                                 f"answer: {describe_error(e)}") from None
            raise
        if conn.peer_id != brick:
            conn.close()
            raise AdminError(f"{format_address(host, port)} answers as {conn.peer_id!r}, "
                             f"not as brick {brick}")
        return conn

    async def send(self, brick: str, msg: Message,
                   timeout: float | None = None) -> dict[str, Any]:
        """The request ``msg`` to ``brick``; its reply within ``timeout`` (default: the
        caller's)."""
        conn = await self.connection(brick)
        try:
            reply: dict[str, Any] = await conn.send(
                msg, timeout=self.timeout if timeout is None else timeout)
            return reply
        finally:
            if not self.reuse:
                conn.close()

    async def status(self, brick: str, timeout: float | None = None) -> StatusReply:
        """``brick``'s ``status``, its shape checked (``dds.replies``)."""
        return StatusReply.from_wire(await self.send(brick, Status(), timeout))

    async def call(self, brick: str, mtype: str, body: dict[str, Any],
                   timeout: float | None = None) -> dict[str, Any]:
        """:meth:`send` of a hand-built body: for the load generators (``tools/bench``)
        until they send typed messages too."""
        conn = await self.connection(brick)
        try:
            reply: dict[str, Any] = await conn.call(
                mtype, body, timeout=self.timeout if timeout is None else timeout)
            return reply
        finally:
            if not self.reuse:
                conn.close()

    def close(self) -> None:
        """Close the connections kept for reuse."""
        if self._cache is not None:
            self._cache.close_all()
