"""A DDS cluster whose bricks run on separate namespace hosts (``tests/multihost/netns``).

Each brick runs on its own host with a configuration as an operator writes it for a
host: ``listen`` on the wildcard address (or, on IPv6, the host's own), ``advertise``
the host's address, the fixed ports 7401 (RPC), 7402 (copy stream) and 7403 (HTTP,
``http_listen`` the host's address).  One more host, the *client host*, runs everything
an operator or a service would: ``dds-admin init`` with a cluster.toml naming every
brick by its address (its failure domain is its host name), ``dds-admin
status|move|split|scrub``, and small client scripts on ``dds.lib.BlockingDDSClient``
that print their result as JSON.  The test process itself never talks to a brick: it
could not, being in the root namespace.

Credentials are mutual TLS by default (a cluster CA made with ``dds-admin certs init``,
a certificate per brick, one for the admin and one for the client), or one shared
secret per role (``auth="secret"``); how they are made, written and passed is decided in
one class, :class:`Credentials`.  Waiting is polling a condition with a deadline (the
brick's ready file, ``status --json``), never a fixed sleep.
"""

from __future__ import annotations

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
STREAM_PORT = 7402
HTTP_PORT = 7403
LEASE_MS = 1000
COMMAND_TIMEOUT_S = 120.0
CERTS_TIMEOUT_S = 60.0
RESULT_MARK = "RESULT "
ROLES = ("brick", "admin", "client")
Status = dict[str, Any]


def admin_command(*args: str) -> list[str]:
    """``dds-admin ARGS`` as a command line of this interpreter."""
    return [sys.executable, "-m", "dds.tools.admin", *args]


def toml_str(value: str | Path) -> str:
    return json.dumps(str(value))


class Credentials:
    """The cluster's credentials and how each party gets them (``mode``):

    - ``"tls"``: a cluster CA made by ``dds-admin certs init`` in ``root/tls``, and
      ``dds-admin certs issue`` certificates there: ``--role brick`` one per brick (its
      id), ``--role admin admin`` and ``--role client client``.  A brick's ``[auth]``
      names the CA, its certificate and key; ``dds-admin`` gets ``--ca-file/--cert-file/
      --key-file`` of the admin's, the library ``tls=`` of the client's;
    - ``"secret"``: one shared secret per role in ``root/secrets/<role>`` (mode 0600):
      every brick's ``[auth]`` names the three, ``dds-admin`` gets the admin role's file
      by ``--secret-file``, the library the client role's secret as ``secret=``.

    Nothing is made until :meth:`make`, which is given the brick ids.
    """

    MODES = ("tls", "secret")
    #: What the test process's environment may hold that must not reach a child.
    PRIVATE_ENV = ("DDS_SECRET", "DDS_BRICK_SECRET", "DDS_ADMIN_SECRET",
                   "DDS_CLIENT_SECRET", "DDS_CA_FILE", "DDS_CERT_FILE", "DDS_KEY_FILE")

    def __init__(self, root: Path, mode: str = "tls") -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, not {mode!r}")
        self.mode = mode
        self.tls_dir = root / "tls"
        self.secrets_dir = root / "secrets"

    # -- making them ----------------------------------------------------------------------

    def make(self, brick_ids: list[str]) -> None:
        """Create every party's credentials (TLS: by ``dds-admin certs`` commands)."""
        if self.mode == "tls":
            self._make_tls(brick_ids)
        else:
            self._make_secrets()

    def _make_tls(self, brick_ids: list[str]) -> None:
        self._certs(["init", str(self.tls_dir), "--cluster", CLUSTER])
        wanted = [("brick", b) for b in brick_ids] + [("admin", "admin"), ("client", "client")]
        # Each issue writes files of its own: run them side by side.
        procs = [(name, subprocess.Popen(
                    admin_command("certs", "issue", "--role", role, name,
                                  "--ca-dir", str(self.tls_dir)),
                    env=self.clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    text=True))
                 for role, name in wanted]
        failed = []
        for name, proc in procs:
            out, _ = proc.communicate(timeout=CERTS_TIMEOUT_S)
            if proc.returncode != 0:
                failed.append(f"certs issue {name} ({proc.returncode}):\n{out}")
        assert not failed, "\n".join(failed)

    def _certs(self, args: list[str]) -> None:
        result = subprocess.run(admin_command("certs", *args), env=self.clean_env(),
                                capture_output=True, text=True, timeout=CERTS_TIMEOUT_S)
        assert result.returncode == 0, (f"dds-admin certs {' '.join(args)} failed "
                                        f"({result.returncode}):\n{result.stdout}"
                                        f"{result.stderr}")

    def _make_secrets(self) -> None:
        self.secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for role in ROLES:
            fd = os.open(self.secrets_dir / role, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")

    # -- giving them out ------------------------------------------------------------------

    def _tls_files(self, name: str) -> tuple[Path, Path, Path]:
        d = self.tls_dir
        return d / "ca.crt", d / f"{name}.crt", d / f"{name}.key"

    def brick_auth(self, brick_id: str) -> str:
        """The ``[auth]`` section of ``brick_id``'s configuration."""
        if self.mode == "tls":
            ca, cert, key = self._tls_files(brick_id)
            return (f'[auth]\nmode = "tls"\nca_file = {toml_str(ca)}\n'
                    f'cert_file = {toml_str(cert)}\nkey_file = {toml_str(key)}\n')
        return '[auth]\nmode = "secret"\n' + "".join(
            f"{role}_secret_file = {toml_str(self.secrets_dir / role)}\n" for role in ROLES)

    def admin_args(self) -> list[str]:
        """Options for every ``dds-admin`` command."""
        if self.mode == "tls":
            ca, cert, key = self._tls_files("admin")
            return ["--ca-file", str(ca), "--cert-file", str(cert), "--key-file", str(key)]
        return ["--secret-file", str(self.secrets_dir / "admin")]

    def client_code(self) -> str:
        """Python that binds ``credentials``: the keyword arguments of the client."""
        if self.mode == "tls":
            ca, cert, key = (str(p) for p in self._tls_files("client"))
            return f"credentials = {{'tls': {{'ca': {ca!r}, 'cert': {cert!r}, 'key': {key!r}}}}}"
        return (f"credentials = {{'secret': open({str(self.secrets_dir / 'client')!r})"
                f".read().strip().encode()}}")

    def clean_env(self) -> dict[str, str]:
        """The test process's environment without credentials or failpoints of its own:
        a child gets exactly what this class gives it."""
        private = (*self.PRIVATE_ENV, failpoints.ENV_VAR)
        return {k: v for k, v in os.environ.items() if k not in private}


class NetnsBrick(BrickProcess):
    """A brick run on a namespace host with a host's configuration (see the module
    docstring): the map names its address and port, so restarts keep them."""

    def __init__(self, brick_id: str, root: Path, topology: Topology, host: Host,
                 credentials: Credentials, extra: str) -> None:
        super().__init__(brick_id, root, cluster=CLUSTER, durability="disk")
        self.topology = topology
        self.host = host
        self.port = BRICK_PORT
        self.http_port = HTTP_PORT
        # Replaces the loopback configuration BrickProcess wrote.
        self.config_path.write_text(self.host_config(credentials, extra))

    def host_config(self, credentials: Credentials, extra: str) -> str:
        address = self.host.address
        listen = address if ":" in address else "0.0.0.0"
        return (f'[brick]\nid = "{self.id}"\nlisten = {toml_str(listen)}\n'
                f'advertise = {toml_str(address)}\nport = {BRICK_PORT}\n'
                f'stream_port = {STREAM_PORT}\nhttp_port = {HTTP_PORT}\n'
                f'http_listen = {toml_str(address)}\ndata_dir = "data"\n'
                f'durability = "disk"\n\n[cluster]\nname = "{CLUSTER}"\n\n'
                f'{credentials.brick_auth(self.id)}\n'
                f'[log]\nformat = "json"\nlevel = "info"\n\n{extra}')

    @property
    def address(self) -> str:
        return self.host.hostport(self.port)

    def start(self) -> None:
        ready = self.data_dir / "ready.json"
        ready.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "dds.bricks.main", "--config", str(self.config_path)]
        with open(self.log_path, "ab") as log:
            self.proc = self.topology.popen(self.host, argv, stdout=log,
                                            stderr=subprocess.STDOUT, cwd=self.dir,
                                            start_new_session=True)


class NetnsCluster:
    """``bricks`` bricks, one per host, plus a client host; see the module docstring.
    ``auth`` is the :class:`Credentials` mode: ``"tls"`` or ``"secret"``."""

    def __init__(self, root: Path, bricks: int = 6, replication: int = 3,
                 partitions: int = 8, lease_ms: int = LEASE_MS, ipv6: bool = False,
                 auth: str = "tls") -> None:
        self.root = root
        self.n_bricks = bricks
        self.replication = replication
        self.partitions = partitions
        self.lease_ms = lease_ms
        self.ipv6 = ipv6
        self.credentials = Credentials(root, auth)
        self.topology: Topology | None = None
        self.bricks: list[NetnsBrick] = []
        self.cut_bricks: set[str] = set()

    # -- life cycle ---------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Make the credentials, build the hosts, start the bricks, ``dds-admin init``,
        and wait until every member of every RG is active and serving.  On failure
        everything is torn down."""
        try:
            self.credentials.make([f"b{i}" for i in range(1, self.n_bricks + 1)])
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
            # Each brick gets 30 s to answer instead of 5: six bricks doing their first
            # TLS handshakes on a loaded machine are slow, not wrong.
            init = self.admin("init", "--config", str(config), "--timeout", "30", seeds=[])
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
        """``dds-admin status --json`` (exit status ignored: it is 1 while a brick is
        down, which these tests bring about on purpose; the report is printed anyway)."""
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

    def http_get(self, brick_id: str, path: str) -> tuple[int, str]:
        """``GET http://<brick's host address>:7403<path>`` from the client host: the
        status code and the body (an error status is an answer too)."""
        assert self.topology is not None
        brick = self.brick(brick_id)
        url = f"http://{brick.host.hostport(HTTP_PORT)}{path}"
        script = textwrap.dedent("""
            import json, sys, urllib.error, urllib.request
            try:
                with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
                    code, body = r.status, r.read()
            except urllib.error.HTTPError as e:
                code, body = e.code, e.read()
            print(json.dumps([code, body.decode()]))
            """)
        proc = self.topology.run(self.client_host, [sys.executable, "-c", script, url],
                                 env=self.credentials.clean_env(), capture_output=True,
                                 text=True, timeout=COMMAND_TIMEOUT_S)
        assert proc.returncode == 0, f"GET {url} failed:\n{proc.stdout}{proc.stderr}"
        code, body = json.loads(proc.stdout)
        return int(code), str(body)

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
