"""A whole cluster of real brick processes, initialized with the same placement code as
``dds-admin init``, plus the plumbing tests need to talk to it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dds.auth import Credentials
from dds.config import parse_cluster_config
from dds.connect import open_connection
from dds.lib import DDSClient
from dds.rpc import RPCProtocol
from dds.tools import credfiles

from tests.harness.processes import BrickProcess, stop_all

CLUSTER = "dds"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if not isinstance(value, str) else f'"{value}"'


class Cluster:
    def __init__(self, root: Path, bricks: int = 6, replication: int = 3,
                 partitions: int = 16, durability: str = "disk",
                 txn_deadline_ms: int | None = None, lease_ms: int | None = None,
                 brick_settings: dict[str, Any] | None = None,
                 timeout_settings: dict[str, int] | None = None, tls: bool = False,
                 auth_settings: dict[str, Any] | None = None) -> None:
        self.root = root
        # One secret per role (DESIGN §10), in root/secrets: ``secret`` is the client
        # role's (what the library connects with), ``admin_secret`` the admin tool's.
        root.mkdir(parents=True, exist_ok=True)
        credfiles.write_role_secrets(root)
        role = credfiles.role_secrets(root)
        self.secret = role["client"].decode()
        self.admin_secret = role["admin"].decode()
        self.brick_secret = role["brick"].decode()
        self.replication = replication
        self.partitions = partitions
        timeouts = {"txn_deadline_ms": txn_deadline_ms, "lease_ms": lease_ms,
                    **(timeout_settings or {})}
        extra = "[timeouts]\n" + "".join(f"{k} = {v}\n" for k, v in timeouts.items()
                                         if v is not None)
        settings = "".join(f"{name} = {_toml(value)}\n"
                           for name, value in (brick_settings or {}).items())
        self.tls = tls
        auth = "".join(f"{name} = {_toml(value)}\n"
                       for name, value in (auth_settings or {}).items())
        self.bricks = [BrickProcess(f"b{i + 1}", root, CLUSTER, durability,
                                    extra, settings, tls=tls, auth_settings=auth)
                       for i in range(bricks)]

    @property
    def seeds(self) -> list[str]:
        return [b.address for b in self.bricks]

    def brick(self, brick_id: str) -> BrickProcess:
        return next(b for b in self.bricks if b.id == brick_id)

    def start(self) -> None:
        for b in self.bricks:
            b.start()
        for b in self.bricks:
            b.wait_ready()

    def cluster_config(self) -> Any:
        return parse_cluster_config({
            "cluster": {"name": CLUSTER, "replication": self.replication,
                        "partitions": self.partitions},
            "bricks": [{"id": b.id, "address": b.address, "host": b.id}
                       for b in self.bricks]})

    def records(self) -> list[Any]:
        from dds.tools.placement import plan_cluster
        plan = plan_cluster(self.cluster_config())
        return list(getattr(plan, "records", plan))

    async def init(self, reactor: Any, wait_serving: bool = True) -> None:
        """Push the initial map to every brick (what ``dds-admin init`` does), then wait
        until every brick serves every RG it is in (holds its membership leases).  The
        pushes go out together: each brick creates its partition files on its own CPU."""
        from twisted.internet.defer import Deferred, FirstError, gatherResults
        wire = [r.canonical() for r in self.records()]

        async def push(b: BrickProcess) -> None:
            conn = await self.admin_connection(reactor, b)
            try:
                await conn.call("map_push", {"records": wire}, timeout=10)
            finally:
                conn.close()
        try:
            await gatherResults([Deferred.fromCoroutine(push(b)) for b in self.bricks],
                                consumeErrors=True)
        except FirstError as e:      # the brick's own error, not the wrapper
            e.subFailure.raiseException()
        if wait_serving:
            await self.wait_serving(reactor, self.bricks)

    async def wait_serving(self, reactor: Any, bricks: list[BrickProcess],
                           timeout: float = 30.0) -> None:
        """Until each of ``bricks`` is active in, and serves, every RG it belongs to."""
        from tests.harness.aio import eventually

        async def all_serving() -> bool:
            for b in bricks:
                conn = await self.admin_connection(reactor, b)
                try:
                    status = await conn.call("status", {}, timeout=10)
                finally:
                    conn.close()
                members = status.get("members", {})
                if not members or any(state != "active" for state in members.values()):
                    return False
                if status.get("blocked") or any(
                        lease["state"] != "valid" for lease in status["leases"].values()):
                    return False
            return True
        await eventually(all_serving, timeout, "bricks to serve all their RGs")

    async def admin_connection(self, reactor: Any, brick: BrickProcess) -> RPCProtocol:
        return await open_connection(reactor, "127.0.0.1", brick.port, node_id="test-admin",
                                     cluster=CLUSTER, credentials=self.credentials("admin"),
                                     max_frame=16 << 20)

    def credentials(self, role: str) -> Credentials:
        """What ``role`` connects with: its shared secret, or its certificate (TLS)."""
        return credfiles.client_credentials(self.root, CLUSTER, role)

    async def client(self, reactor: Any, **options: Any) -> DDSClient:
        return await DDSClient.connect(reactor, self.seeds, cluster=CLUSTER,
                                       credentials=self.credentials("client"), **options)

    def metrics_text(self, brick_id: str) -> str:
        """The brick's ``/metrics`` page (Prometheus text)."""
        import urllib.request
        b = self.brick(brick_id)
        return urllib.request.urlopen(f"http://127.0.0.1:{b.http_port}/metrics",
                                      timeout=10).read().decode()

    def metric(self, brick_id: str, name: str, **labels: str) -> float:
        """The sample ``dds_<name>`` with exactly ``labels`` from the brick's
        ``/metrics`` (``metric("b1", "requests_total", type="get")``); without labels,
        the sum of its samples (``stream_refused_total`` over its reasons); 0 when
        absent."""
        from prometheus_client.parser import text_string_to_metric_families
        total = 0.0
        for family in text_string_to_metric_families(self.metrics_text(brick_id)):
            for sample in family.samples:
                if sample.name == f"dds_{name}" and (not labels or sample.labels == labels):
                    total += float(sample.value)
        return total

    def stop(self) -> None:
        """SIGTERM to every brick at once, then reap them (``stop_all``)."""
        try:
            stop_all(self.bricks)
        except Exception as e:  # the others were killed
            raise RuntimeError(f"bricks did not stop cleanly: {e}") from e
