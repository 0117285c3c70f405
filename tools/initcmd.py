"""``dds-admin init``: give the bricks of a cluster configuration their first map.

All or nothing at the door: every brick is contacted and its current map read *before*
anything is pushed, so an unreachable brick, a wrong secret, a brick that answers under
another id, or one that already belongs to another cluster stops the command with nothing
changed anywhere.  Then every record is pushed to every brick (``map_push``) and the
command waits until all bricks report the same map fingerprint.

Running ``init`` again with the same configuration is harmless: the plan is deterministic,
so the records pushed are the ones the bricks already hold.  ``--force`` takes over bricks
that hold other records: each conflicting record is pushed at a version above every
version seen, and replica groups the plan does not have are retired (pushed empty).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs

from dds.config import ClusterConfig, parse_address
from dds.errors import AuthenticationFailed, DDSError
from dds.maps import ClusterMap
from dds.partition import PartitionId
from dds.messages import MapGet, MapPush, Status
from dds.records import Record, RGRecord
from dds.replies import StatusReply
from dds.rpc import RPCProtocol

from dds.tools.cluster import Target, connect_brick, describe_error, gather
from dds.tools.placement import PlacementError, plan
from dds.tools.runner import AdminError, poll_until

__all__ = ["InitResult", "init_cluster"]


@attrs.frozen
class InitResult:
    map: ClusterMap
    #: Placement problems that could not be avoided (shared failure domains).
    warnings: tuple[str, ...]
    #: Records each brick adopted from the push.
    adopted: dict[str, int]


@attrs.frozen
class _Brick:
    id: str
    host: str
    port: int

    @property
    def where(self) -> str:
        return f"brick {self.id} at {self.host}:{self.port}"


async def _open(reactor: Any, b: _Brick, target: Target, timeout: float
                ) -> tuple[RPCProtocol, ClusterMap]:
    conn = await connect_brick(reactor, b.host, b.port, target, timeout)
    try:
        if conn.peer_id != b.id:
            raise AdminError(f"{b.where} says it is {conn.peer_id!r}, not {b.id!r}: "
                             "check the configuration")
        reply = await conn.send(MapGet(), timeout=timeout)
        return conn, ClusterMap.from_wire(reply["map"])
    except BaseException:
        conn.close()
        raise


def _evolved(want: Record, held: Record) -> bool:
    """``held`` is ``want`` after membership changes (DESIGN §5): same bricks, same
    partitions, only member states and the version moved on.  Re-running init on a
    running cluster (``dds-admin local up`` after a restart) must accept that."""
    return (isinstance(want, RGRecord) and isinstance(held, RGRecord)
            and held.version > want.version
            and [m.brick for m in held.members] == [m.brick for m in want.members]
            and held.partitions == want.partitions)


def _conflicts(planned: ClusterMap, held: dict[str, ClusterMap]) -> list[str]:
    """Why the planned records would not simply be adopted by every brick."""
    problems = []
    mine = planned.cluster
    for bid, cmap in held.items():
        theirs = cmap.cluster
        if theirs is not None and mine is not None and theirs.fp != mine.fp:
            problems.append(f"brick {bid} already belongs to cluster {theirs.name!r} "
                            f"(replication {theirs.replication}, cluster record "
                            f"v{theirs.version} fp {theirs.fp:#010x}), not this one")
            continue
        for rec in cmap:
            want = planned.get(rec.record_id)
            if want is None and isinstance(rec, RGRecord) and rec.members:
                problems.append(f"brick {bid} holds {rec.record_id}, which this plan "
                                "does not have")
            elif want is not None and _evolved(want, rec):
                continue    # the same group after exclusions or recoveries: in service
            elif want is not None and (rec.version > want.version or
                                       (rec.version == want.version and rec.fp != want.fp)):
                problems.append(f"brick {bid} holds a different {rec.record_id} "
                                f"(v{rec.version} fp {rec.fp:#010x})")
    return problems


def _forced(planned: ClusterMap, held: dict[str, ClusterMap]) -> list[Record]:
    """The planned records, each above any different version a brick holds, plus the
    retirement (no members, no partitions) of groups the plan does not have."""
    out: dict[str, Record] = dict(planned.records)
    top: dict[str, int] = {}
    differs: set[str] = set()
    for cmap in held.values():
        for rec in cmap:
            top[rec.record_id] = max(top.get(rec.record_id, 0), rec.version)
            want = planned.get(rec.record_id)
            if want is None or rec.fp != want.fp:
                differs.add(rec.record_id)
                if want is None and isinstance(rec, RGRecord):
                    out[rec.record_id] = attrs.evolve(rec, members=[], partitions=[])
    for rid in differs:
        if (found := out.get(rid)) is not None:
            out[rid] = attrs.evolve(found, version=top[rid] + 1)
    return list(out.values())


async def init_cluster(reactor: Any, cfg: ClusterConfig, target: Target, *,
                       force: bool = False, timeout: float = 5.0,
                       say: Callable[[str], None] = lambda s: None,
                       partitions: Sequence[PartitionId] | None = None) -> InitResult:
    """Push the plan's records (``partitions``: explicit leaves instead of the
    configuration's equal ones, e.g. a backup's) to every brick; see the module."""
    try:
        p = plan(cfg, partitions)
    except PlacementError as e:
        raise AdminError(f"{cfg.source}: {e}") from None
    planned = ClusterMap.of(p.records)
    bricks = [_Brick(b.id, *parse_address(b.address)) for b in cfg.bricks]

    say(f"contacting {len(bricks)} bricks")
    opened = await gather(_open(reactor, b, target, timeout) for b in bricks)
    conns: dict[str, RPCProtocol] = {}
    held: dict[str, ClusterMap] = {}
    problems: list[str] = []
    for b, res in zip(bricks, opened):
        if isinstance(res, AdminError):
            problems.extend(res.lines)
        elif isinstance(res, AuthenticationFailed):
            problems.append(f"{b.where} refused the handshake: {res.message}")
        elif isinstance(res, BaseException):
            problems.append(f"{b.where} does not answer: {describe_error(res)}")
        else:
            conns[b.id], held[b.id] = res
    try:
        if problems:
            raise AdminError(*problems, "nothing was pushed")
        records: list[Record] = list(p.records)
        conflicts = _conflicts(planned, held)
        if conflicts and not force:
            raise AdminError(*conflicts, "nothing was pushed; use --force to take these "
                             "bricks over with this configuration")
        if conflicts:
            records = _forced(planned, held)
            say(f"--force: pushing {len(records)} records over {len(conflicts)} conflicts")
        push = MapPush(records=[r.canonical() for r in records])
        say(f"pushing {len(records)} records to {len(conns)} bricks")
        replies = await gather(conns[b.id].send(push, timeout=timeout) for b in bricks)
        adopted: dict[str, int] = {}
        for b, reply in zip(bricks, replies):
            if isinstance(reply, BaseException):
                problems.append(f"{b.where}: push failed: {describe_error(reply)}")
            elif reply.get("conflicts"):
                problems.append(f"{b.where} refused {', '.join(reply['conflicts'])} "
                                "(same version, different contents)")
            else:
                adopted[b.id] = int(reply.get("adopted", 0))
        if problems:
            raise AdminError(*problems)
        return InitResult(await _verify(reactor, bricks, conns, timeout, say),
                          p.warnings, adopted)
    finally:
        for conn in conns.values():
            conn.close()


async def _verify(reactor: Any, bricks: list[_Brick], conns: dict[str, RPCProtocol],
                  timeout: float, say: Callable[[str], None]) -> ClusterMap:
    """Wait until every brick reports one map fingerprint; return that map."""
    fps: dict[str, int | str] = {}

    async def map_fp(conn: RPCProtocol) -> int:
        return StatusReply.from_wire(await conn.send(Status(), timeout=timeout)).map_fp

    async def agreed() -> bool:
        replies = await gather(map_fp(conns[b.id]) for b in bricks)
        for b, r in zip(bricks, replies):
            fps[b.id] = describe_error(r) if isinstance(r, BaseException) else r
        return len(set(fps.values())) == 1 and all(isinstance(v, int) for v in fps.values())

    say("verifying map fingerprints")
    if not await poll_until(reactor, agreed, timeout=max(timeout, 10.0), interval=0.1):
        raise AdminError("bricks do not agree on the map after the push:",
                         *(f"  {bid}: " + (f"{fp:#010x}" if isinstance(fp, int) else fp)
                           for bid, fp in fps.items()))
    try:
        reply = await conns[bricks[0].id].send(MapGet(), timeout=timeout)
        return ClusterMap.from_wire(reply["map"])
    except (DDSError, ValueError, KeyError) as e:
        raise AdminError(f"{bricks[0].where}: map_get failed: {describe_error(e)}") from None
