"""A private network of "hosts" built from Linux network namespaces, for multi-host tests.

Why namespaces: bricks on one loopback share one address, so a test cannot cut one host
off the network without killing its process.  Here every host is a namespace with its own
address, and cutting it is a link going down, as a pulled cable would be: the brick keeps
running, its peers simply stop hearing from it.

The machine's network policy is that no traffic leaves the machine nor touches the root
namespace's addresses, so everything lives in namespaces this module creates:

- a *switch* namespace ``ddsnet-<tag>`` holding the bridge ``br0`` (no uplink, no
  address of its own);
- one namespace per host, ``ddsh-<tag>-<i>``, whose ``eth0`` is one end of a veth pair;
  the other end, ``p<i>``, is a port of the bridge in the switch namespace.  Both ends are
  created from the switch namespace (``ip -n``), so nothing appears in the root namespace,
  even for a moment;
- IPv4 addresses from ``10.213.<n>.0/24`` and IPv6 from ``fd0d:d5:0:<n>::/64`` (a
  unique local prefix), ``<n>`` random per run; no host has a default route.

The test process stays in the root namespace and runs everything on a host with
``ip netns exec`` (which execs, so a Popen's pid is the program's own).  ``<tag>`` is
random per run; an owner file under :data:`OWNERS` names the process that made it, so a
later run deletes only namespaces whose maker is gone (:func:`clean_stale`).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import subprocess
from pathlib import Path
from typing import Any

import attrs

SWITCH_PREFIX = "ddsnet-"
HOST_PREFIX = "ddsh-"
#: One file per live topology: ``<tag>`` holding "<pid> <start time>" of its maker.
OWNERS = Path("/run/dds-multihost")
IP_TIMEOUT_S = 10.0


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """One ``ip`` command; a failure raises with the kernel's words in the message."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True,
                            timeout=IP_TIMEOUT_S)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def list_namespaces() -> list[str]:
    """Names of the namespaces ``ip netns`` knows (the first word of each line)."""
    out = _ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def namespaces_available() -> str | None:
    """None when this process can create and delete a network namespace, else why not
    (the kernel's or ``ip``'s refusal): the one reason to skip the multihost tests."""
    name = f"{HOST_PREFIX}probe-{secrets.token_hex(2)}"
    try:
        added = _ip("netns", "add", name, check=False)
    except FileNotFoundError:
        return "the 'ip' command (iproute2) is not installed"
    if added.returncode != 0:
        return f"ip netns add {name}: {added.stderr.strip() or 'refused'}"
    deleted = _ip("netns", "del", name, check=False)
    # Another run's clean_stale may have deleted it first (a probe has no owner file).
    if deleted.returncode != 0 and name in list_namespaces():
        return f"ip netns del {name}: {deleted.stderr.strip() or 'refused'}"
    return None


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/pid/stat), so that a reused
    pid is not mistaken for a live maker."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _kill_inside(ns: str) -> None:
    """SIGKILL the processes left in ``ns`` (started there by a harness), by pid."""
    listed = _ip("netns", "pids", ns, check=False).stdout.split()
    for pid in listed:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def _delete(ns: str) -> None:
    _kill_inside(ns)
    result = _ip("netns", "del", ns, check=False)
    if result.returncode != 0 and ns in list_namespaces():
        raise RuntimeError(f"ip netns del {ns}: {result.stderr.strip()}")


def _tag_of(ns: str) -> str | None:
    if ns.startswith(SWITCH_PREFIX):
        return ns[len(SWITCH_PREFIX):]
    if ns.startswith(HOST_PREFIX):
        return ns[len(HOST_PREFIX):].split("-", 1)[0]
    return None


def _owner_alive(tag: str) -> bool:
    try:
        pid_text, start = (OWNERS / tag).read_text().split()
    except (OSError, ValueError):
        return False
    return _start_time(int(pid_text)) == start


def clean_stale() -> list[str]:
    """Delete the ``ddsnet-*``/``ddsh-*`` namespaces whose maker is no longer running
    (a run killed before its teardown); another live run's namespaces are kept.
    Returns the names deleted."""
    gone = []
    for ns in list_namespaces():
        tag = _tag_of(ns)
        if tag is None or _owner_alive(tag):
            continue
        _delete(ns)
        gone.append(ns)
    if OWNERS.is_dir():
        for owner in OWNERS.iterdir():
            if not _owner_alive(owner.name):
                owner.unlink(missing_ok=True)
    return gone


@attrs.frozen
class Host:
    """One namespace host: ``name`` is its failure-domain name (``h1``…), ``ns`` its
    namespace, ``address`` the address it is reached at (IPv6 in an IPv6 topology)."""
    name: str
    ns: str
    index: int
    ipv4: str
    ipv6: str
    address: str
    port: str       # its bridge port (veth end) in the switch namespace

    def hostport(self, port: int) -> str:
        """``address:port`` as DDS configurations spell it (``[v6]:port``)."""
        return f"[{self.address}]:{port}" if ":" in self.address else f"{self.address}:{port}"


class Topology:
    """A switch namespace, ``n`` host namespaces on it, and ways to run things there."""

    def __init__(self, tag: str, subnet: int, ipv6: bool) -> None:
        self.tag = tag
        self.subnet = subnet
        self.ipv6 = ipv6
        self.switch = f"{SWITCH_PREFIX}{tag}"
        self.hosts: list[Host] = []
        self.destroyed = False

    @property
    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(f"10.213.{self.subnet}.0/24"),
                ipaddress.ip_network(f"fd0d:d5:0:{self.subnet}::/64")]

    @property
    def namespaces(self) -> list[str]:
        return [self.switch, *(h.ns for h in self.hosts)]

    @classmethod
    def create(cls, n_hosts: int, ipv6: bool = False) -> "Topology":
        """Build the switch and ``n_hosts`` hosts; on any failure what was built is torn
        down before the error propagates."""
        if not 1 <= n_hosts <= 200:
            raise ValueError(f"n_hosts must be 1..200, not {n_hosts}")
        clean_stale()
        tag = secrets.token_hex(3)
        topo = cls(tag, secrets.randbelow(254) + 1, ipv6)
        OWNERS.mkdir(parents=True, exist_ok=True)
        (OWNERS / tag).write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
        try:
            topo._build(n_hosts)
        except BaseException:
            topo.destroy()
            raise
        return topo

    def _build(self, n_hosts: int) -> None:
        sw = self.switch
        _ip("netns", "add", sw)
        _ip("-n", sw, "link", "set", "lo", "up")
        _ip("-n", sw, "link", "add", "br0", "type", "bridge", "stp_state", "0",
            "forward_delay", "0")
        _ip("-n", sw, "link", "set", "br0", "up")
        for i in range(1, n_hosts + 1):
            v4 = f"10.213.{self.subnet}.{i}"
            v6 = f"fd0d:d5:0:{self.subnet}::{i:x}"
            host = Host(f"h{i}", f"{HOST_PREFIX}{self.tag}-{i}", i, v4, v6,
                        v6 if self.ipv6 else v4, f"p{i}")
            _ip("netns", "add", host.ns)
            self.hosts.append(host)
            _ip("-n", host.ns, "link", "set", "lo", "up")
            _ip("-n", sw, "link", "add", host.port, "type", "veth", "peer", "name", "eth0",
                "netns", host.ns)
            _ip("-n", sw, "link", "set", host.port, "master", "br0", "up")
            _ip("-n", host.ns, "addr", "add", f"{v4}/24", "dev", "eth0")
            # nodad: usable at once, instead of after duplicate address detection.
            _ip("-n", host.ns, "addr", "add", f"{v6}/64", "dev", "eth0", "nodad")
            _ip("-n", host.ns, "link", "set", "eth0", "up")

    def host(self, which: Host | str | int) -> Host:
        """A host by itself, its name (``h2``), its namespace or its index (from 1)."""
        if isinstance(which, Host):
            return which
        for h in self.hosts:
            if which in (h.name, h.ns, h.index):
                return h
        raise KeyError(f"no host {which!r} in {[h.name for h in self.hosts]}")

    def argv(self, host: Host | str | int, argv: list[str]) -> list[str]:
        """``argv`` as run on ``host``."""
        return ["ip", "netns", "exec", self.host(host).ns, *argv]

    def run(self, host: Host | str | int, argv: list[str],
            **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run`` of ``argv`` on ``host`` (give a ``timeout``)."""
        return subprocess.run(self.argv(host, argv), **kwargs)

    def popen(self, host: Host | str | int, argv: list[str],
              **kwargs: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen`` of ``argv`` on ``host``; its pid is the program's own."""
        return subprocess.Popen(self.argv(host, argv), **kwargs)

    def cut(self, host: Host | str | int) -> None:
        """Isolate ``host``: its bridge port goes down, so its ``eth0`` loses carrier.
        Its addresses and processes stay as they were (taking ``eth0`` itself down would
        also drop its IPv6 address); nothing reaches it and nothing leaves it."""
        _ip("-n", self.switch, "link", "set", self.host(host).port, "down")

    def restore(self, host: Host | str | int) -> None:
        """Undo :meth:`cut`."""
        _ip("-n", self.switch, "link", "set", self.host(host).port, "up")

    def is_cut(self, host: Host | str | int) -> bool:
        """Whether ``host``'s bridge port is administratively down."""
        out = _ip("-n", self.switch, "-o", "link", "show", self.host(host).port).stdout
        flags = out.split("<", 1)[1].split(">", 1)[0].split(",")
        return "UP" not in flags

    def destroy(self) -> None:
        """Kill what still runs in the namespaces and delete them; safe to call twice.
        Every namespace is attempted even when one fails; the first error is raised."""
        errors = []
        existing = set(list_namespaces())
        for ns in [*(h.ns for h in self.hosts), self.switch]:
            if ns in existing:
                try:
                    _delete(ns)
                except RuntimeError as e:
                    errors.append(str(e))
        # A host namespace whose creation failed half-way is not in self.hosts.
        for ns in list_namespaces():
            if ns.startswith(f"{HOST_PREFIX}{self.tag}-"):
                _delete(ns)
        (OWNERS / self.tag).unlink(missing_ok=True)
        self.destroyed = True
        if errors:
            raise RuntimeError("; ".join(errors))

    def __enter__(self) -> "Topology":
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()
