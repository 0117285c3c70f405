"""A brick crashes during a reorganization (DESIGN §7 with §8), with real brick processes
and writers running:

1. a target member, or the source member, of a move killed with SIGKILL during the copy
   (the move is rolled back; the brick restarts and re-syncs);
2. the source member, or a target member, killed after the cut-over, with the admin tool
   (``repair`` finishes the move while the brick is down; the restarted brick does not
   keep the dropped partition and re-syncs the rest);
3. a member re-syncing (killed, excluded, restarted, and copying) while a move into its
   RG, a move out of its RG or a split of its partition runs: it is left out of the job
   and ends up with every partition its RG lists;
4. a member readmitted between the moment ``dds-admin move`` planned and its
   ``incoming`` step (the step refuses: the plan would not copy to it).

Every test ends with the same checks (:func:`_settled_and_intact`): the key range is
active in exactly one place and nothing is left incoming or outgoing; every member of
every RG is active, holds every partition its RG lists (and no other) and agrees with the
others (checksums, then ``dds-admin scrub``); every acknowledged write is on every
replica; every recovery is done; no job is left unfinished.

The moved partition is preloaded with 20,000 keys (about 3 MB) and paced copies run at
1 MB/s, so a copy takes a few seconds and a test can kill a brick, or start a job, in
the middle of it: the tests wait for copied bytes and record states, never for time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from dds import failpoints
from dds.lib import DDSClient
from dds.partition import PartitionId
from dds.records import RGRecord, record_from_wire
from dds.tools.cluster import Target
from dds.tools.move import move
from dds.tools.split import reshape

from tests.harness.aio import call, eventually, replica_value, run_admin
from tests.harness.cluster import CLUSTER, Cluster
from tests.harness.processes import BrickProcess
from tests.harness.writers import (Writers, checksums, make_cluster, nothing_prepared,
                                   restart)
from tests.verify.linearizability import check_lost_writes

LEASE_MS = 1000
WAIT_S = 30.0
#: The moved (or split) partition, in rg0 (b1, b2, b3); moves go to rg3 (b4, b5, b6),
#: which holds p2.2.  (``tools/placement.py`` for 6 bricks, replication 3, 4 partitions.)
PID = PartitionId.parse("p2.0")
OTHER = PartitionId.parse("p2.2")
PRELOAD_KEYS = 20_000
#: MB/s of each copy: a 3 MB partition takes about 3 s.
RATE_MB_S = 1
#: An unpaced move's copies (0: no limit, whatever the bricks' copy_rate_mb_s).
FAST_MB_S = 0


# -- set-up ---------------------------------------------------------------------------------

def _key(i: int, pid: PartitionId = PID) -> bytes:
    """The ``i``-th key of ``pid``: ``k-<i>``, or ``k-<i>.<n>`` with the smallest ``n``
    that routes to it."""
    key, n = b"k-%06d" % i, 0
    while not pid.owns(key):
        key = b"k-%06d.%d" % (i, n)
        n += 1
    return key


def _preload(cluster: Cluster, pid: PartitionId) -> None:
    """``PRELOAD_KEYS`` rows of ``pid`` into every brick's file before the bricks start
    (those outside its RG drop it when the map comes)."""
    from dds.tools.bench.preload import preload_partition as write_file

    path = cluster.root / "preload.sqlite"
    write_file(path, str(pid), PRELOAD_KEYS, 100, types.SimpleNamespace(progress=None),
               key=lambda i: _key(i, pid))
    for b in cluster.bricks:
        b.data_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, b.data_dir / f"{pid}.sqlite")
    path.unlink()


@pytest.fixture
def clusters(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """``make(slow_recovery=...)``: a started 6-brick cluster (replication 3, 4
    partitions, 1 s leases), ``PID`` preloaded, stopped at the end.  With
    ``slow_recovery``, ``OTHER`` is preloaded too and every brick serves copies at
    ``RATE_MB_S``, so that a recovery of rg0 or rg3 takes a few seconds."""
    made: list[Cluster] = []

    def make(slow_recovery: bool = False) -> Cluster:
        c = make_cluster(tmp_path / f"cluster{len(made)}", bricks=6, replication=3,
                         partitions=4, timeouts={"lease_ms": LEASE_MS},
                         brick_settings={"copy_rate_mb_s": RATE_MB_S} if slow_recovery
                         else None)
        made.append(c)
        _preload(c, PID)
        if slow_recovery:
            _preload(c, OTHER)
        c.start()
        return c
    yield make
    for c in made:
        c.stop()


def _target(cluster: Cluster) -> Target:
    return Target(tuple(("127.0.0.1", b.port) for b in cluster.bricks),
                  cluster.admin_secret.encode(), CLUSTER)


async def _admin(cluster: Cluster, *args: str,
                 env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``dds-admin ARGS`` as a process, without blocking the reactor (the writers go on):
    ``(exit status, stdout, stderr)``."""
    secret = cluster.root / "secrets" / "admin"
    base = {k: v for k, v in os.environ.items()
            if k not in ("DDS_SECRET", failpoints.ENV_VAR)}
    argv = [sys.executable, "-m", "dds.tools.admin", *args, "--seeds",
            ",".join(b.address for b in cluster.bricks), "--secret-file", str(secret)]
    done = await run_admin(argv, {**base, **(env or {})})
    return done.returncode, done.stdout, done.stderr


async def _true(value: bool) -> bool:
    return value


def _layout(client: DDSClient) -> tuple[RGRecord, RGRecord]:
    """``PID``'s RG and a target RG sharing no member with it (every target copies)."""
    cmap = client.map
    source = cmap.partition_rg[PID]
    target = next(r for _, r in sorted(cmap.rgs.items())
                  if not set(r.active_members) & set(source.active_members))
    return source, target


def _keys(client: DDSClient, rg: RGRecord) -> tuple[list[bytes], list[bytes]]:
    """Keys for the writers: 24 of ``PID`` (preloaded ones), and 24 of ``rg``'s other
    partitions (so that its members' recoveries have writes to copy too)."""
    moving = [_key(i) for i in range(24)]
    others = [k for k in (b"o-%d" % i for i in range(2000))
              if client.router.route(client.map, k).rg.name == rg.name][:24]
    return moving, others


async def _status(cluster: Cluster, brick: BrickProcess) -> dict[str, Any]:
    reply: dict[str, Any] = await call(cluster, brick, "status", {})
    return reply


async def _copying(cluster: Cluster, brick: BrickProcess) -> bool:
    """Whether ``brick`` is in the middle of taking in ``PID`` (some bytes, not all)."""
    pull = (await _status(cluster, brick))["moves_in"].get(str(PID))
    return bool(pull and 0 < pull["bytes_done"] < pull["bytes_total"])


async def _newest(cluster: Cluster, rg: str) -> RGRecord:
    """The newest record of ``rg`` among the bricks that answer."""
    best: RGRecord | None = None
    for b in cluster.bricks:
        if not b.alive():
            continue
        data = (await call(cluster, b, "rg_status", {"rg": rg}))["record"]
        rec = record_from_wire(data) if data is not None else None
        if isinstance(rec, RGRecord) and (best is None or rec.version > best.version):
            best = rec
    assert best is not None, rg
    return best


def _start(coro: Any) -> Deferred[Any]:
    """Run ``coro`` in the background; the Deferred fires with its result or the
    exception (as a value: the test decides what it may be)."""
    d = Deferred.fromCoroutine(coro)
    d.addErrback(lambda f: f.value)
    return d


# -- the checks every test ends with --------------------------------------------------------

async def _settled_and_intact(cluster: Cluster, checker: DDSClient,
                              writers: Writers, pids: list[PartitionId]) -> None:
    await eventually(lambda: nothing_prepared(cluster, cluster.bricks), WAIT_S,
                     "every transaction to be resolved")

    async def same_map() -> bool:
        digests = [sorted(map(tuple, (await _status(cluster, b))["digest"]))
                   for b in cluster.bricks]
        return all(d == digests[0] for d in digests)
    await eventually(same_map, WAIT_S, "every brick to hold the same map")
    await checker.maps.refresh()
    cmap = checker.map

    # Each key range active in exactly one RG, and nothing half-moved left behind.
    for pid in pids:
        owners = [r.name for r in cmap.rgs.values() if pid in r.active_partitions]
        assert len(owners) == 1, (pid, owners)
    leftovers = [(r.name, str(e.pid), e.state) for r in cmap.rgs.values()
                 for e in r.partitions if e.state != "active"]
    assert not leftovers, leftovers

    # Every member of every RG active, holding every partition its RG lists (and no
    # other), the replicas equal.
    why = [""]

    async def replicas_agree() -> bool:
        await checker.maps.refresh()
        for rec in checker.map.rgs.values():
            if list(rec.active_members) != [m.brick for m in rec.members]:
                why[0] = f"{rec.name} v{rec.version}: {rec.members}"
                return False
            for p in sorted(str(e.pid) for e in rec.partitions):
                sums = {}
                for b in rec.active_members:
                    held = (await _status(cluster, cluster.brick(b)))["partitions"]
                    if p not in held:
                        why[0] = f"{b} holds no replica of {p} ({rec.name}): {held}"
                        return False
                    sums[b] = (await call(cluster, cluster.brick(b), "checksum",
                                          {"pid": p}))
                if len({(s["count"], s["checksum"]) for s in sums.values()}) != 1:
                    why[0] = f"replicas of {p} differ: {sums}"
                    return False
        for b in cluster.bricks:
            mine = {str(e.pid) for r in checker.map.rgs.values() if r.member_state(b.id)
                    for e in r.partitions}
            extra = set((await _status(cluster, b))["partitions"]) - mine
            if extra:
                why[0] = f"{b.id} still holds {sorted(extra)}, which no RG of its lists"
                return False
        return True
    try:
        await eventually(replicas_agree, WAIT_S,
                         "every member to hold equal replicas of its RGs' partitions")
    except TimeoutError as e:
        raise AssertionError(f"{e}: {why[0]}") from None
    assert checker.map.digest == cmap.digest, "the map changed after it had settled"

    # Every acknowledged write, on every replica.
    keys = sorted(writers.keys)
    finals: list[dict[bytes, tuple[bytes | None, int]]] = [{}, {}, {}]
    for k in keys:
        route = checker.router.route(cmap, k)
        assert len(route.replicas) == 3, (k, route.rg)
        for i, b in enumerate(route.replicas):
            finals[i][k] = await replica_value(cluster, checker, cluster.brick(b.id), k)
    ops = writers.ops()
    assert sum(op.status == "ok" for op in ops) == len(writers.acks) > 50
    for replica in finals:
        lost = check_lost_writes(ops, replica)
        assert lost.ok, [v.message for v in lost.violations[:5]]
    for i in range(0, PRELOAD_KEYS, 997):      # the preloaded rows came along
        k = _key(i)
        if k not in writers.keys:
            assert (await checker.get(k)).version == 1, k
    for b in cluster.bricks:
        recovery = (await _status(cluster, b))["recovery"]
        assert all(r["phase"] == "done" for r in recovery.values()), (b.id, recovery)

    code, out, err = await _admin(cluster, "scrub", "--json")
    assert code == 0, out[-3000:] + err[-3000:]
    code, out, err = await _admin(cluster, "jobs", "--json")
    assert code == 0 and json.loads(out)["jobs"] == [], out + err


async def _repair(cluster: Cluster) -> list[str]:
    """``dds-admin repair``: exit status 0; returns the reorg step's actions."""
    code, out, err = await _admin(cluster, "repair", "--json")
    assert code == 0, out[-3000:] + err[-3000:]
    report = json.loads(out)
    [reorg] = [s for s in report["steps"] if s["name"] == "reorg"]
    return [str(d["action"]) for d in reorg["result"]["resumed"]]


# -- 1, 2. a member of the move killed during the copy ------------------------------------

@pytest.mark.parametrize("role", ["target", "source"])
@pytest_twisted.ensureDeferred
async def test_a_member_killed_during_a_moves_copy(
        clusters: Callable[..., Cluster], role: str) -> None:
    """kill -9 of a target member (one taking the partition in) or of the source member
    (the one the copies come from), while the copy runs and writers write: the move is
    rolled back (by the tool, or by ``repair``); the killed brick restarts and re-syncs;
    nothing is lost and the replicas agree."""
    cluster = clusters()
    await cluster.init(reactor)
    checker = await cluster.client(reactor, timeout=10.0)
    from_rg, to_rg = _layout(checker)
    moving, others = _keys(checker, to_rg if role == "target" else from_rg)
    victim = cluster.brick(to_rg.active_members[-1] if role == "target"
                           else from_rg.active_members[0])      # plan_move's source
    watched = cluster.brick(to_rg.active_members[0])
    writers = Writers(cluster, moving + others, n=4)
    await writers.start()
    try:
        await eventually(lambda: _true(len(writers.acks) >= 40), WAIT_S, "writes to flow")
        lines: list[str] = []
        moving_d = _start(move(reactor, _target(cluster), str(PID), to_rg.name,
                               lines.append, rate_mb_s=RATE_MB_S))
        await eventually(lambda: _copying(cluster, watched), WAIT_S, "the copy to start")
        victim.stop(signal.SIGKILL)
        outcome = await moving_d
        print(f"{role} killed: {outcome!r}; {lines}")
        # The tool cannot finish a copy whose source or target died: it rolls back.
        assert isinstance(outcome, Exception), (outcome, lines)
        await restart(cluster, victim)
        assert await _repair(cluster) in ([], ["rolled back"])
        await cluster.wait_serving(reactor, cluster.bricks, timeout=WAIT_S)
        n = len(writers.acks)
        await eventually(lambda: _true(len(writers.acks) >= n + 40), WAIT_S,
                         "writes after the restart")
    finally:
        await writers.stop()
    await _settled_and_intact(cluster, checker, writers, [PID])
    await checker.maps.refresh()
    assert checker.map.partition_rg[PID].name == from_rg.name, lines
    await checker.close()


# -- 3. a brick killed after the cut-over ---------------------------------------------------

@pytest.mark.parametrize("role", ["source", "target"])
@pytest_twisted.ensureDeferred
async def test_a_brick_killed_after_the_cutover_is_finished_by_repair(
        clusters: Callable[..., Cluster], role: str) -> None:
    """``dds-admin move`` dies right after the cut-over (``move.after_cutover-in``), and
    a member is killed with it: the source member (which still holds the move's fence
    and its outgoing replica) or a target member (whose RG serves the partition now).
    ``repair`` finishes the move while the brick is down; restarted, the brick re-syncs
    its RGs, and a source brick does not bring the dropped partition back."""
    cluster = clusters()
    await cluster.init(reactor)
    checker = await cluster.client(reactor, timeout=10.0)
    from_rg, to_rg = _layout(checker)
    victim = cluster.brick(from_rg.active_members[0] if role == "source"
                           else to_rg.active_members[-1])
    moving, others = _keys(checker, from_rg if role == "source" else to_rg)
    writers = Writers(cluster, moving + others, n=4)
    await writers.start()
    try:
        await eventually(lambda: _true(len(writers.acks) >= 40), WAIT_S, "writes to flow")
        code, out, err = await _admin(
            cluster, "move", str(PID), "--to", to_rg.name,
            env={failpoints.ENV_VAR: "move.after_cutover-in=crash"})
        assert code == failpoints.CRASH_EXIT_CODE, out + err
        victim.stop(signal.SIGKILL)
        # The killed brick's journal cannot be read: repair says so (exit status 1),
        # and finishes the move all the same.
        code, out, err = await _admin(cluster, "repair", "--step", "reorg", "--json")
        assert code == 1, out + err
        [reorg] = [s for s in json.loads(out)["steps"] if s["name"] == "reorg"]
        assert [d["action"] for d in reorg["result"]["resumed"]] == ["finished"], out
        assert [u["brick"] for u in reorg["result"]["unreachable"]] == [victim.id], out
        dropped = await _newest(cluster, from_rg.name)
        assert dropped.partition_state(PID) is None, dropped

        await restart(cluster, victim)
        await cluster.wait_serving(reactor, cluster.bricks, timeout=WAIT_S)
        assert await _repair(cluster) == []
        n = len(writers.acks)
        await eventually(lambda: _true(len(writers.acks) >= n + 40), WAIT_S,
                         "writes after the restart")
    finally:
        await writers.stop()
    await _settled_and_intact(cluster, checker, writers, [PID])
    assert checker.map.partition_rg[PID].name == to_rg.name
    held = (await _status(cluster, victim))["partitions"]
    assert (str(PID) in held) == (role == "target"), held
    await checker.close()


# -- 4. a member that is re-syncing when a reorganization starts --------------------------

async def _excluded(cluster: Cluster, brick: BrickProcess, rg: str) -> bool:
    return (await _newest(cluster, rg)).member_state(brick.id) == "excluded"


async def _recovery_held(cluster: Cluster, brick: BrickProcess, rg: str) -> bool:
    """``brick``'s recovery of ``rg`` copied bytes, then failed at the middle chunk."""
    r = (await _status(cluster, brick))["recovery"].get(rg)
    return bool(r and r["attempts"] >= 1 and r["last_error"]
                and "copy.mid" in r["last_error"])


async def _hold_copies(cluster: Cluster, sources: list[BrickProcess], held: bool) -> None:
    """Make every chunk request for the middle of a snapshot fail at ``sources`` (or no
    longer): a recovery copying from them retries until it is released."""
    for b in sources:
        await call(cluster, b, "failpoint",
                   {"name": "copy.mid", "action": "error" if held else None})


async def _kill_and_restart_until_copying(cluster: Cluster, victim: BrickProcess,
                                          rg: str, *, hold: bool = False
                                          ) -> list[BrickProcess]:
    """kill -9 ``victim``; once the writers had it excluded from ``rg``, restart it and
    return while it copies ``rg``'s partitions.

    Every possible source (the other active members of ``rg``) fails the copy at its
    middle chunk until the victim's record is read and spread, so the victim is
    certainly still *recovering* then (a paced copy alone could finish first on a loaded
    machine).  With ``hold`` they go on failing it: the caller releases them
    (``_hold_copies``) and gets the sources for that; else its copy goes on now."""
    victim.stop(signal.SIGKILL)
    await eventually(lambda: _excluded(cluster, victim, rg), WAIT_S,
                     f"{victim.id} to be excluded from {rg}")
    sources = [cluster.brick(b) for b in (await _newest(cluster, rg)).active_members
               if b != victim.id]
    await _hold_copies(cluster, sources, True)
    try:
        await restart(cluster, victim)
        await eventually(lambda: _recovery_held(cluster, victim, rg), WAIT_S,
                         f"{victim.id} to copy half of {rg}")
        # The admin tools plan from any brick's map: spread the record now (gossip
        # would, within a few seconds, which could outlast the copy).
        rec = await _newest(cluster, rg)
        assert rec.member_state(victim.id) == "recovering", rec
        for b in cluster.bricks:
            await call(cluster, b, "map_push", {"records": [rec.canonical()]})
    except BaseException:
        await _hold_copies(cluster, sources, False)
        raise
    if not hold:
        await _hold_copies(cluster, sources, False)
    return sources


async def _move_beside_a_re_syncing_member(
        clusters: Callable[..., Cluster], *, in_target_rg: bool, rate_mb_s: int
) -> tuple[Cluster, BrickProcess]:
    """Under 4 writers, kill and restart a member of the target RG (or of the source RG,
    not the move's source) until it is copying, move ``PID`` meanwhile, and check that
    the move left the member out, writes go on after it, and everything settles intact
    in the target RG.  Returns the cluster and the member."""
    cluster = clusters(slow_recovery=True)
    await cluster.init(reactor)
    checker = await cluster.client(reactor, timeout=10.0)
    from_rg, to_rg = _layout(checker)
    rg = to_rg if in_target_rg else from_rg
    victim = cluster.brick(rg.active_members[-1])
    moving, others = _keys(checker, to_rg)
    writers = Writers(cluster, moving + others, n=4)
    await writers.start()
    try:
        await eventually(lambda: _true(len(writers.acks) >= 40), WAIT_S, "writes to flow")
        # In the target RG, the victim stays re-syncing until the move is done (were it
        # readmitted meanwhile, the move would stop: "became active after the move was
        # planned: run it again").  In the source RG its sources include the move's, so
        # its copy goes on at once.
        held = await _kill_and_restart_until_copying(cluster, victim, rg.name,
                                                     hold=in_target_rg)
        lines: list[str] = []
        try:
            result = await move(reactor, _target(cluster), str(PID), to_rg.name,
                                lines.append, rate_mb_s=rate_mb_s)
        finally:
            if in_target_rg:
                await _hold_copies(cluster, held, False)
        assert victim.id not in result["target_bricks"], result
        await cluster.wait_serving(reactor, cluster.bricks, timeout=WAIT_S)
        n = len(writers.acks)
        await eventually(lambda: _true(len(writers.acks) >= n + 40), WAIT_S,
                         "writes after the move")
    finally:
        await writers.stop()
    await _settled_and_intact(cluster, checker, writers, [PID])
    assert checker.map.partition_rg[PID].name == to_rg.name
    await checker.close()
    return cluster, victim


@pytest_twisted.ensureDeferred
async def test_a_move_into_an_rg_whose_member_is_re_syncing(
        clusters: Callable[..., Cluster]) -> None:
    """A member of the target RG was killed and restarted, and is copying the RG's
    partitions when the move starts (so the move does not copy to it): the move
    completes, and the member ends up holding the moved-in partition too."""
    await _move_beside_a_re_syncing_member(clusters, in_target_rg=True, rate_mb_s=RATE_MB_S)


@pytest_twisted.ensureDeferred
async def test_a_move_planned_before_a_member_was_readmitted(
        clusters: Callable[..., Cluster], monkeypatch: pytest.MonkeyPatch) -> None:
    """The member of the target RG is readmitted between the moment ``dds-admin move``
    read the map (it was re-syncing then, so the plan does not copy to it) and the
    ``incoming`` step: a window of milliseconds, opened here by handing the move the
    map read before the readmission.  Whatever the move does, the member must not end
    up active in the RG that serves the partition without a copy of it."""
    import dds.tools.move as move_mod
    from dds.tools.cluster import fetch_map

    cluster = clusters(slow_recovery=True)
    await cluster.init(reactor)
    checker = await cluster.client(reactor, timeout=10.0)
    from_rg, to_rg = _layout(checker)
    victim = cluster.brick(to_rg.active_members[-1])
    moving, others = _keys(checker, to_rg)
    writers = Writers(cluster, moving + others, n=4)
    await writers.start()
    try:
        await eventually(lambda: _true(len(writers.acks) >= 40), WAIT_S, "writes to flow")
        await _kill_and_restart_until_copying(cluster, victim, to_rg.name)
        stale = await fetch_map(reactor, _target(cluster))
        await cluster.wait_serving(reactor, cluster.bricks, timeout=WAIT_S)

        async def planned_earlier(reactor: Any, target: Target, *a: Any) -> Any:
            return stale
        monkeypatch.setattr(move_mod, "fetch_map", planned_earlier)
        lines: list[str] = []
        outcome = await _start(move(reactor, _target(cluster), str(PID), to_rg.name,
                                    lines.append, rate_mb_s=FAST_MB_S))
        monkeypatch.undo()
        print(f"stale plan: {outcome!r}")
        await cluster.wait_serving(reactor, cluster.bricks, timeout=WAIT_S)
        n = len(writers.acks)
        await eventually(lambda: _true(len(writers.acks) >= n + 40), WAIT_S,
                         "writes after the move")
    finally:
        await writers.stop()
    # Writes stopped and resolved: the replicas of the partition are final now.
    await eventually(lambda: nothing_prepared(cluster, cluster.bricks), WAIT_S,
                     "every transaction to be resolved")
    await checker.maps.refresh()
    owner = checker.map.partition_rg[PID]
    sums = await checksums(cluster, [cluster.brick(b) for b in owner.active_members],
                           str(PID))
    assert len(set(sums.values())) == 1, (owner.name, sums)
    await _settled_and_intact(cluster, checker, writers, [PID])
    await checker.close()


@pytest_twisted.ensureDeferred
async def test_a_move_out_of_an_rg_whose_member_is_re_syncing(
        clusters: Callable[..., Cluster]) -> None:
    """A member of the source RG was killed and restarted, and is copying the RG's
    partitions, the moved one among them, while the move runs to its end (unpaced: it
    drops the partition before that copy is done): the member is readmitted with what
    its RG lists by then, and keeps no replica of the partition that moved away."""
    cluster, victim = await _move_beside_a_re_syncing_member(
        clusters, in_target_rg=False, rate_mb_s=FAST_MB_S)
    assert str(PID) not in (await _status(cluster, victim))["partitions"]


@pytest_twisted.ensureDeferred
async def test_a_split_in_an_rg_whose_member_is_re_syncing(
        clusters: Callable[..., Cluster]) -> None:
    """A member of the RG was killed and restarted, and is copying the RG's partitions
    when ``dds-admin split`` starts: the split goes on without it, and the member ends
    up holding the two halves, equal to the other members'."""
    cluster = clusters(slow_recovery=True)
    await cluster.init(reactor)
    checker = await cluster.client(reactor, timeout=10.0)
    rg = checker.map.partition_rg[PID]
    victim = cluster.brick(rg.active_members[-1])
    moving, _ = _keys(checker, rg)
    writers = Writers(cluster, moving, n=4)
    await writers.start()
    try:
        await eventually(lambda: _true(len(writers.acks) >= 40), WAIT_S, "writes to flow")
        await _kill_and_restart_until_copying(cluster, victim, rg.name)
        lines: list[str] = []
        result = await reshape(reactor, _target(cluster), "split", str(PID), lines.append)
        assert result["state"] == "done" and victim.id not in result["members"], result
        await cluster.wait_serving(reactor, cluster.bricks, timeout=WAIT_S)
        n = len(writers.acks)
        await eventually(lambda: _true(len(writers.acks) >= n + 40), WAIT_S,
                         "writes after the split")
    finally:
        await writers.stop()
    await _settled_and_intact(cluster, checker, writers, list(PID.children()))
    held = (await _status(cluster, victim))["partitions"]
    assert {str(c) for c in PID.children()} <= set(held) and str(PID) not in held, held
    await checker.close()
