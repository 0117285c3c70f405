"""The namespace topology itself: hosts reach each other, a cut host is cut, the root
namespace is kept out, and nothing is left behind.

Traffic is a tiny TCP echo server and client run on the hosts with ``ip netns exec``.
Waits are conditions with deadlines (the server's "listening" line, a client retried
until it gets through), never sleeps.
"""

from __future__ import annotations

import errno
import ipaddress
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from tests.multihost import netns
from tests.multihost.netns import Host, Topology

pytestmark = pytest.mark.multihost

PORT = 7000
WAIT_S = 15.0

ECHO_SERVER = r"""
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
print("listening", flush=True)
while True:
    conn, _ = s.accept()
    with conn:
        conn.sendall(b"echo:" + conn.recv(1024))
"""

ECHO_CLIENT = r"""
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])),
                                  timeout=float(sys.argv[3])) as c:
        c.sendall(sys.argv[4].encode())
        print(c.recv(1024).decode())
except OSError as e:
    print(f"error: {e!r}")
    sys.exit(1)
"""


def start_echo(topo: Topology, host: Host) -> subprocess.Popen[str]:
    """An echo server on ``host`` at its address, once it listens."""
    proc = topo.popen(host, [sys.executable, "-c", ECHO_SERVER, host.address, str(PORT)],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], WAIT_S)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "listening":
        proc.kill()
        _, err = proc.communicate(timeout=WAIT_S)
        raise AssertionError(f"echo server on {host.name} did not start: {line!r} {err}")
    return proc


def echo(topo: Topology, source: Host, target: Host, text: str,
         timeout: float = 2.0) -> str:
    """What ``target``'s echo server answers ``source``, or "error: …"."""
    result = topo.run(source, [sys.executable, "-c", ECHO_CLIENT, target.address, str(PORT),
                               str(timeout), text],
                      capture_output=True, text=True, timeout=timeout + WAIT_S)
    answer: str = result.stdout.strip() or result.stderr.strip()
    return answer


def echo_until(topo: Topology, source: Host, target: Host, text: str) -> str:
    """``echo`` retried until it gets the answer or ``WAIT_S`` runs out."""
    deadline = time.monotonic() + WAIT_S
    while True:
        answer = echo(topo, source, target, text)
        if answer == f"echo:{text}" or time.monotonic() > deadline:
            return answer


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen[str]]]:
    """Echo servers to stop at the end (before their namespaces go)."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        p.kill()
        p.communicate(timeout=WAIT_S)


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_two_hosts_reach_each_other_over_tcp(topologies: Callable[..., Topology],
                                             servers: list[subprocess.Popen[str]],
                                             ipv6: bool) -> None:
    topo = topologies(2, ipv6=ipv6)
    h1, h2 = topo.hosts
    assert (":" in h1.address) == ipv6
    servers.append(start_echo(topo, h1))
    assert echo_until(topo, h2, h1, "hello") == "echo:hello"


def test_a_cut_host_is_unreachable(topologies: Callable[..., Topology],
                                   servers: list[subprocess.Popen[str]]) -> None:
    topo = topologies(3)
    h1, h2, h3 = topo.hosts
    servers.append(start_echo(topo, h1))
    assert echo_until(topo, h2, h1, "before") == "echo:before"
    topo.cut(h1)
    assert topo.is_cut(h1)
    assert echo(topo, h2, h1, "during", timeout=1.0).startswith("error:")
    assert echo(topo, h3, h1, "during", timeout=1.0).startswith("error:")
    assert servers[0].poll() is None, "the cut host's process keeps running"


def test_a_restored_host_is_reachable_again(topologies: Callable[..., Topology],
                                            servers: list[subprocess.Popen[str]]) -> None:
    topo = topologies(2)
    h1, h2 = topo.hosts
    servers.append(start_echo(topo, h1))
    topo.cut(h1)
    assert echo(topo, h2, h1, "cut", timeout=1.0).startswith("error:")
    topo.restore(h1)
    assert not topo.is_cut(h1)
    assert echo_until(topo, h2, h1, "after") == "echo:after"


def test_the_root_namespace_cannot_reach_the_hosts(topologies: Callable[..., Topology],
                                                   servers: list[subprocess.Popen[str]]
                                                   ) -> None:
    """An ordinary connect from here would follow this machine's default route off the
    machine, which the network policy forbids; so the proof is that no link of the root
    namespace leads to the hosts: none holds an address of theirs or belongs to the
    topology, and a connect restricted to directly attached networks (SO_DONTROUTE,
    never handed to a gateway) finds no network for a host that a neighbour reaches."""
    topo = topologies(2)
    h1, h2 = topo.hosts
    servers.append(start_echo(topo, h1))
    assert echo_until(topo, h2, h1, "control") == "echo:control"

    addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True,
                           check=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                           check=True).stdout
    for net in topo.networks:
        for line in addrs.splitlines():
            local = line.split()[3].split("/")[0]
            assert ipaddress.ip_address(local) not in net, line
    assert not any(ns in links for ns in topo.namespaces), links

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_DONTROUTE, 1)
        s.settimeout(2.0)
        with pytest.raises(OSError) as refused:
            s.connect((h1.ipv4, PORT))
    assert refused.value.errno == errno.ENETUNREACH, refused.value


def test_teardown_removes_every_namespace() -> None:
    """Also with a process still running on a host, and when the body fails."""
    topo = Topology.create(3)
    names = topo.namespaces
    assert set(names) <= set(netns.list_namespaces())
    proc = start_echo(topo, topo.hosts[0])
    with pytest.raises(ZeroDivisionError):
        with topo:
            1 / 0
    left = [ns for ns in netns.list_namespaces() if topo.tag in ns]
    assert left == [], left
    assert proc.wait(WAIT_S) is not None, "the host's process was ended"
    assert not (netns.OWNERS / topo.tag).exists()


def test_stale_namespaces_of_a_dead_run_are_deleted_and_live_ones_kept(
        topologies: Callable[..., Topology]) -> None:
    live = topologies(1)
    stale = f"{netns.HOST_PREFIX}dead{live.tag[:2]}-1"    # no owner file: its maker is gone
    subprocess.run(["ip", "netns", "add", stale], check=True, timeout=WAIT_S)
    try:
        deleted = netns.clean_stale()
        present = netns.list_namespaces()
        assert stale in deleted and stale not in present
        assert set(live.namespaces) <= set(present)
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True, timeout=WAIT_S)
