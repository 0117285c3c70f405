"""A DDS cluster whose bricks run on separate namespace hosts (``tests/multihost/netns``).

Each brick is a ``tests/harness`` :class:`BrickProcess` started on its own host with
``brick.host`` set to that host's address and a fixed port; one more host, the *client
host*, runs everything an operator or a service would: ``dds-admin init`` with a
cluster.toml naming every brick by its address (its failure domain is its host name),
``dds-admin status|move|split|scrub``, and small client scripts on
``dds.lib.BlockingDDSClient`` that print their result as JSON.  The test process itself
never talks to a brick: it could not, being in the root namespace.

How credentials are made, written and passed is decided in one class,
:class:`Credentials`, so that moving to mutual TLS changes one place.
Waiting is polling a condition with a deadline (the brick's ready file, ``status
--json``), never a fixed sleep.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

from dds import failpoints
from dds.partition import PartitionId

from tests.harness.processes import BrickProcess
from tests.multihost.netns import Host, Topology

CLUSTER = "dds"
BRICK_PORT = 7401
LEASE_MS = 1000
COMMAND_TIMEOUT_S = 120.0
RESULT_MARK = "RESULT "
Status = dict[str, Any]


class Credentials:
    """The cluster's credentials and how each party gets them: the one place to change
    for mutual TLS.  It does what ``tests/harness`` does, whichever scheme that is:

    - one shared secret (``BrickProcess(…, secret)`` writes it into the brick's
      ``[cluster] secret``), given to ``dds-admin`` by ``--secret-file`` and to the
      library as ``secret=``;
    - one secret per role (``BrickProcess`` without ``secret`` writes an ``[auth]``
      section naming ``root/secrets/<role>``): ``dds-admin`` gets the admin role's file,
      the library the client role's secret.
    """

    #: What the test process's environment may hold that must not reach a child.
    PRIVATE_ENV = ("DDS_SECRET", "DDS_BRICK_SECRET", "DDS_ADMIN_SECRET",
                   "DDS_CLIENT_SECRET", "DDS_CA_FILE", "DDS_CERT_FILE", "DDS_KEY_FILE")

    def __init__(self, root: Path) -> None:
        self.per_role = "secret" not in inspect.signature(BrickProcess.__init__).parameters
        self._brick_kwargs: dict[str, Any] = {}
        if self.per_role:
            # Imported by name: the module arrives with the per-role secrets.
            credfiles = importlib.import_module("dds.tools.credfiles")
            files: dict[str, Path] = credfiles.write_role_secrets(root)
            self.admin_file: Path = files["admin"]
            self.client_file: Path = files["client"]
        else:
            secret = secrets.token_hex(16)
            self.admin_file = self.client_file = root / "secret"
            self.admin_file.write_text(secret)
            self.admin_file.chmod(0o600)
            self._brick_kwargs["secret"] = secret

    def brick_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`BrickProcess` that give the brick its own."""
        return dict(self._brick_kwargs)

    def admin_args(self) -> list[str]:
        """Options for every ``dds-admin`` command."""
        return ["--secret-file", str(self.admin_file)]

    def client_code(self) -> str:
        """Python that binds ``credentials``: the keyword arguments of the client."""
        return (f"credentials = {{'secret': open({str(self.client_file)!r}).read()"
                f".strip().encode()}}")

    def clean_env(self) -> dict[str, str]:
        """The test process's environment without credentials or failpoints of its own:
        a child gets exactly what this class gives it."""
        private = (*self.PRIVATE_ENV, failpoints.ENV_VAR)
        return {k: v for k, v in os.environ.items() if k not in private}


class NetnsBrick(BrickProcess):
    """A :class:`BrickProcess` run on a namespace host, at its address and a fixed port
    (the map names both, so restarts keep them)."""

    def __init__(self, brick_id: str, root: Path, topology: Topology, host: Host,
                 credentials: Credentials, extra: str) -> None:
        super().__init__(brick_id, root, cluster=CLUSTER, durability="disk", extra=extra,
                         **credentials.brick_kwargs())
        self.topology = topology
        self.host = host
        self.port = BRICK_PORT

    @property
    def address(self) -> str:
        return self.host.hostport(self.port)

    def start(self) -> None:
        ready = self.data_dir / "ready.json"
        ready.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "dds.bricks.main", "--config", str(self.config_path),
                "--set", f"brick.host={self.host.address}", "--set", f"brick.port={self.port}"]
        with open(self.log_path, "ab") as log:
            self.proc = self.topology.popen(self.host, argv, stdout=log,
                                            stderr=subprocess.STDOUT, cwd=self.dir,
                                            start_new_session=True)


class NetnsCluster:
    """``bricks`` bricks, one per host, plus a client host; see the module docstring."""

    def __init__(self, root: Path, bricks: int = 6, replication: int = 3,
                 partitions: int = 8, lease_ms: int = LEASE_MS, ipv6: bool = False) -> None:
        self.root = root
        self.n_bricks = bricks
        self.replication = replication
        self.partitions = partitions
        self.lease_ms = lease_ms
        self.ipv6 = ipv6
        self.credentials = Credentials(root)
        self.topology: Topology | None = None
        self.bricks: list[NetnsBrick] = []
        self.cut_bricks: set[str] = set()

    # -- life cycle ---------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Build the hosts, start the bricks, ``dds-admin init``, and wait until every
        member of every RG is active and serving.  On failure everything is torn down."""
        try:
            self.topology = Topology.create(self.n_bricks + 1, ipv6=self.ipv6)
            extra = f"[timeouts]\nlease_ms = {self.lease_ms}\n"
            self.bricks = [NetnsBrick(f"b{h.index}", self.root, self.topology, h,
                                      self.credentials, extra)
                           for h in self.topology.hosts[:self.n_bricks]]
            for b in self.bricks:
                b.start()
            for b in self.bricks:
                b.wait_ready()
            config = self.write_cluster_toml()
            init = self.admin("init", "--config", str(config), seeds=[])
            assert init.returncode == 0, f"dds-admin init failed:\n{init.stdout}{init.stderr}"
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def write_cluster_toml(self) -> Path:
        """cluster.toml as an operator writes it: every brick at its host's address, its
        failure domain the host's name (so no RG puts two replicas on one host)."""
        lines = [f'[cluster]\nname = "{CLUSTER}"\nreplication = {self.replication}\n'
                 f'partitions = {self.partitions}\n']
        for b in self.bricks:
            lines.append(f'[[bricks]]\nid = "{b.id}"\naddress = "{b.address}"\n'
                         f'host = "{b.host.name}"\n')
        path = self.root / "cluster.toml"
        path.write_text("\n".join(lines))
        return path

    def stop(self) -> None:
        """Stop every brick, then delete the namespaces, whatever fails on the way.
        Cut hosts are restored first, so that no brick's shutdown waits on a peer."""
        try:
            self.restore_all()
            errors = []
            for b in self.bricks:
                try:
                    b.stop()
                except Exception as e:       # keep stopping the others
                    errors.append(f"{b.id}: {e!r}")
            if errors:
                raise RuntimeError("bricks did not stop cleanly: " + "; ".join(errors))
        finally:
            if self.topology is not None:
                self.topology.destroy()

    # -- hosts and bricks ---------------------------------------------------------------

    @property
    def client_host(self) -> Host:
        assert self.topology is not None, "cluster not started"
        return self.topology.hosts[self.n_bricks]

    def brick(self, brick_id: str) -> NetnsBrick:
        return next(b for b in self.bricks if b.id == brick_id)

    def reachable(self) -> list[NetnsBrick]:
        """The bricks whose host is not cut: the seeds commands are given."""
        return [b for b in self.bricks if b.id not in self.cut_bricks]

    def cut(self, brick_id: str) -> None:
        assert self.topology is not None
        self.topology.cut(self.brick(brick_id).host)
        self.cut_bricks.add(brick_id)

    def restore(self, brick_id: str) -> None:
        assert self.topology is not None
        self.topology.restore(self.brick(brick_id).host)
        self.cut_bricks.discard(brick_id)

    def restore_all(self) -> None:
        for brick_id in sorted(self.cut_bricks):
            self.restore(brick_id)

    def log_tails(self) -> str:
        """The end of every brick's log, for failure messages."""
        return "\n".join(f"--- {b.id}\n{b.log_tail(15)}" for b in self.bricks)

    # -- dds-admin on the client host ---------------------------------------------------

    def admin(self, *args: str, seeds: list[NetnsBrick] | None = None,
              timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """``dds-admin ARGS --seeds … <credentials>`` on the client host; ``seeds``
        defaults to the bricks not cut off, ``[]`` gives no ``--seeds`` (init)."""
        assert self.topology is not None
        chosen = self.reachable() if seeds is None else seeds
        argv = [sys.executable, "-m", "dds.tools.admin", *args]
        if chosen:
            argv += ["--seeds", ",".join(b.address for b in chosen)]
        argv += self.credentials.admin_args()
        return self.topology.run(self.client_host, argv, env=self.credentials.clean_env(),
                                 capture_output=True, text=True, timeout=timeout)

    def admin_json(self, *args: str, code: int = 0) -> dict[str, Any]:
        """``admin(… --json)`` that must exit with ``code``; its report decoded."""
        result = self.admin(*args, "--json")
        assert result.returncode == code, (args, result.stdout, result.stderr)
        report: dict[str, Any] = json.loads(result.stdout)
        return report

    def status(self) -> Status:
        """``dds-admin status --json`` (exit status ignored: a down brick is reported,
        not an error of the command)."""
        result = self.admin("status", "--json", "--timeout", "2")
        try:
            report: Status = json.loads(result.stdout)
        except ValueError:
            raise AssertionError(f"status printed no report:\n{result.stdout}"
                                 f"{result.stderr}") from None
        return report

    def wait_status(self, condition: Callable[[Status], bool], what: str,
                    timeout: float = 60.0) -> Status:
        """Poll ``status`` until ``condition`` holds; the last report in the error."""
        deadline = time.monotonic() + timeout
        while True:
            report = self.status()
            if condition(report):
                return report
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}; "
                                   f"last status:\n{json.dumps(report, indent=1)[:6000]}\n"
                                   f"{self.log_tails()}")

    def wait_healthy(self, timeout: float = 60.0) -> Status:
        """Every brick up, one map, every member active and serving."""
        return self.wait_status(lambda r: r["ok"] and r["membership_ok"],
                                "every member of every RG active and serving", timeout)

    # -- clients on the client host -----------------------------------------------------

    def client(self, code: str, timeout: float = 30.0, **params: Any) -> Any:
        """Run ``code`` on the client host with ``client`` (a connected
        ``BlockingDDSClient``, ``timeout`` per operation) and ``params`` bound; it sets
        ``result``, which comes back through JSON."""
        assert self.topology is not None
        script = "\n".join([
            "import json, sys",
            "from dds.lib import BlockingDDSClient",
            "params = json.loads(sys.argv[1])",
            self.credentials.client_code(),
            "client = BlockingDDSClient(params['seeds'], cluster=params['cluster'],",
            "                           timeout=params['timeout'], **credentials)",
            "try:",
            textwrap.indent(textwrap.dedent(code).strip(), "    "),
            "finally:",
            "    client.close()",
            f"print({RESULT_MARK!r} + json.dumps(result), flush=True)"])
        args = {"seeds": [b.address for b in self.reachable()], "cluster": CLUSTER,
                "timeout": timeout, **params}
        proc = self.topology.run(self.client_host,
                                 [sys.executable, "-c", script, json.dumps(args)],
                                 env=self.credentials.clean_env(), capture_output=True,
                                 text=True, timeout=COMMAND_TIMEOUT_S, cwd=self.root)
        for line in reversed(proc.stdout.splitlines()):
            if line.startswith(RESULT_MARK) and proc.returncode == 0:
                return json.loads(line[len(RESULT_MARK):])
        raise AssertionError(f"client script failed ({proc.returncode}):\n{proc.stdout}"
                             f"{proc.stderr}")

    def put(self, items: dict[str, str]) -> dict[str, int]:
        """Write every ``key: value`` (8 at a time); the version of each."""
        versions: dict[str, int] = self.client("""
            from concurrent.futures import ThreadPoolExecutor
            items = sorted(params['items'].items())
            with ThreadPoolExecutor(8) as pool:
                done = pool.map(lambda kv: client.put(kv[0].encode(), kv[1].encode()),
                                items)
                result = dict(zip([k for k, _ in items], done))
            """, items=items)
        return versions

    def get(self, keys: list[str]) -> dict[str, tuple[str | None, int]]:
        """``(value, version)`` of every key, as the client reads it."""
        got = self.client("""
            result = {}
            for k in params['keys']:
                r = client.get(k.encode())
                result[k] = [None if r.value is None else r.value.decode(), r.version]
            """, keys=keys)
        return {k: (v, n) for k, (v, n) in got.items()}


# -- reading status reports ------------------------------------------------------------

def rg_of(report: Status, name: str) -> dict[str, Any]:
    return next(g for g in report["rgs"] if g["name"] == name)


def member_of(report: Status, rg: str, brick_id: str) -> dict[str, Any]:
    return next(m for m in rg_of(report, rg)["members"] if m["brick"] == brick_id)


def brick_of(report: Status, brick_id: str) -> dict[str, Any]:
    return next(b for b in report["bricks"] if b["id"] == brick_id)


def route(report: Status, key: str) -> tuple[str, str]:
    """``(rg, partition)`` that hold ``key`` in the map of ``report``: the partition whose
    prefix owns the key's hash, active in its RG."""
    for g in report["rgs"]:
        for pid, state in g["partition_states"].items():
            if state == "active" and PartitionId.parse(pid).owns(key.encode()):
                return g["name"], pid
    raise KeyError(f"no active partition owns {key!r}")


def rgs_with(report: Status, brick_id: str) -> list[str]:
    """The RGs that list ``brick_id`` as a member (in any state)."""
    return [g["name"] for g in report["rgs"]
            if any(m["brick"] == brick_id for m in g["members"])]
