"""The errors a service developer meets first (issue 14), against real bricks: a wrong
secret, a cluster that is down, and a blocking write slowed in the middle of its 2PC."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from dds.errors import AuthenticationFailed, Unavailable
from dds.lib import DDSClient

from tests.harness.aio import call, eventually, stop
from tests.harness.cluster import CLUSTER

#: Far below the client's timeout: "fails fast" means without waiting for it.
_FAST_S = 3.0


@pytest_twisted.ensureDeferred
async def test_a_wrong_secret_is_authentication_failed_naming_the_seed(
        cluster_factory: Any) -> None:
    cluster = cluster_factory(bricks=3, replication=3, partitions=4)
    await cluster.init(reactor)
    seed = cluster.seeds[0]
    with pytest.raises(AuthenticationFailed) as info:
        await DDSClient.connect(reactor, [seed], cluster=CLUSTER, secret=b"not-the-secret")
    assert info.value.retryable is False
    assert seed in info.value.message
    assert "refused the credentials" in info.value.message


async def _down_cluster(cluster_factory: Any) -> tuple[Any, DDSClient]:
    """A client that knew the cluster, whose bricks have all stopped since (their ports
    are closed: every connection is refused), once it has seen its connections close: a
    request already sent when its brick died may have arrived, and its write is rightly
    ``Indeterminate``."""
    cluster = cluster_factory(bricks=3, replication=3, partitions=4)
    await cluster.init(reactor)
    client = await cluster.client(reactor, timeout=10.0)
    await client.put(b"k", b"v")
    await stop(*cluster.bricks)

    async def all_closed() -> bool:
        return not client.connections.open
    await eventually(all_closed, 10.0, "the client to see its connections close")
    return cluster, client


@pytest_twisted.ensureDeferred
async def test_a_get_with_every_brick_down_fails_fast_naming_the_addresses(
        cluster_factory: Any) -> None:
    cluster, client = await _down_cluster(cluster_factory)
    started = reactor.seconds()
    with pytest.raises(Unavailable) as info:
        await client.get(b"k")
    assert reactor.seconds() - started < _FAST_S
    for address in cluster.seeds:
        assert address in info.value.message
    assert "refused" in info.value.message
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_put_with_every_brick_down_fails_fast_naming_the_addresses(
        cluster_factory: Any) -> None:
    cluster, client = await _down_cluster(cluster_factory)
    started = reactor.seconds()
    with pytest.raises(Unavailable) as info:
        await client.put(b"k", b"w")
    assert reactor.seconds() - started < _FAST_S
    for address in cluster.seeds:
        assert address in info.value.message
    assert "refused" in info.value.message
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_get_still_succeeds_while_one_replica_answers(cluster_factory: Any) -> None:
    cluster = cluster_factory(bricks=3, replication=3, partitions=4)
    await cluster.init(reactor)
    client = await cluster.client(reactor, timeout=10.0)
    await client.put(b"k", b"v")
    await stop(cluster.brick("b1"), cluster.brick("b2"))
    assert (await client.get(b"k")).value == b"v"
    await client.close()


def _blocking(tmp_path: Path, body: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a process of its own: the blocking client runs the global reactor
    in a thread (crochet), which the test process's reactor must not share."""
    script = tmp_path / "blocking_client.py"
    script.write_text("import sys\n"
                      "from dds.lib import BlockingDDSClient\n"
                      "from dds.errors import DDSError\n" + body)
    return subprocess.run([sys.executable, str(script), *args], capture_output=True,
                          text=True, timeout=120)


@pytest_twisted.ensureDeferred
async def test_a_blocking_put_paused_mid_commit_is_never_reported_as_a_timeout(
        cluster_factory: Any, tmp_path: Path) -> None:
    cluster = cluster_factory(bricks=3, replication=3, partitions=4)
    await cluster.init(reactor)
    victim = cluster.brick("b1")
    await call(cluster, victim, "failpoint",
               {"name": "commit.before_apply", "action": "count:1:pause"})
    proc = _blocking(tmp_path,
                     "c = BlockingDDSClient(sys.argv[1].split(','), cluster='dds',"
                     " secret=sys.argv[2], timeout=10)\n"
                     "try:\n"
                     "    c.put(b'slowed', b'applied', timeout=1.5)\n"
                     "    print('ok')\n"
                     "except DDSError as e:\n"
                     "    print(type(e).__name__, e)\n",
                     ",".join(cluster.seeds), cluster.secret)
    victim.send_signal(signal.SIGCONT)
    assert "failpoint commit.before_apply: pause" in victim.log_tail()   # it was slowed
    assert proc.returncode == 0, proc.stderr
    outcome = proc.stdout.split()[0]
    assert outcome in ("ok", "Indeterminate"), proc.stdout
    client = await cluster.client(reactor, timeout=10.0)
    assert (await client.get(b"slowed")).value == b"applied"
    await client.close()


_NEVER_ANSWERS = (
    "import dds.lib.blocking as blocking\n"
    "from twisted.internet.defer import Deferred, succeed\n"
    "class Stuck:\n"
    "    '''A DDSClient whose calls never answer.'''\n"
    "    @classmethod\n"
    "    def connect(cls, reactor, seeds, **options):\n"
    "        return succeed(cls())\n"
    "    def get(self, key, timeout=None, consistency=None):\n"
    "        return Deferred()\n"
    "    def put(self, key, value, timeout=None):\n"
    "        return Deferred()\n"
    "blocking.DDSClient = Stuck\n"
    "blocking._GRACE_S = 0.2\n"
    "c = BlockingDDSClient(['127.0.0.1:1'], cluster='dds', secret='s')\n"
    "try:\n"
    "    getattr(c, sys.argv[1])(b'k', *([b'v'] if sys.argv[1] == 'put' else []),"
    " timeout=0.1)\n"
    "except DDSError as e:\n"
    "    print(type(e).__name__)\n")


def test_a_blocking_write_whose_wait_runs_out_is_indeterminate(tmp_path: Path) -> None:
    proc = _blocking(tmp_path, _NEVER_ANSWERS, "put")
    assert proc.stdout.strip() == "Indeterminate", proc.stderr


def test_a_blocking_read_whose_wait_runs_out_is_a_timeout(tmp_path: Path) -> None:
    proc = _blocking(tmp_path, _NEVER_ANSWERS, "get")
    assert proc.stdout.strip() == "Timeout", proc.stderr
