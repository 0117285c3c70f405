"""A cluster's DR record (``dds.records.DRRecord``) as the admin tool reads and changes it:
read from every brick of the map (the newest wins), pushed to every brick with
``map_push`` and checked adopted by each, so the change holds at once rather than after
gossip has spread it."""

from __future__ import annotations

from typing import Any, Callable

import attrs

from dds.errors import DDSError
from dds.maps import ClusterMap
from dds.messages import MapGet, MapPush
from dds.records import DRRecord

from dds.tools.cluster import BrickCaller, Target, describe_error, fetch_map, gather
from dds.tools.runner import AdminError

__all__ = ["ClusterView", "view", "push_dr"]


@attrs.frozen
class ClusterView:
    """A cluster's map (from a seed) and its newest DR record over every brick."""

    target: Target
    map: ClusterMap
    dr: DRRecord | None
    #: Bricks that did not answer the map request, with why.
    silent: dict[str, str]

    @property
    def addresses(self) -> dict[str, tuple[str, int]]:
        return {b.id: (b.address, b.port) for b in self.map.bricks.values()}


async def view(reactor: Any, target: Target, timeout: float = 5.0) -> ClusterView:
    """The cluster's map and its newest DR record (``AdminError`` if no seed answers)."""
    cmap, _seed = await fetch_map(reactor, target, timeout)
    calls = BrickCaller(reactor, target, {b.id: (b.address, b.port)
                                          for b in cmap.bricks.values()},
                        timeout=timeout, connect_timeout=timeout, reuse=False)
    ids = sorted(cmap.bricks)
    replies = await gather(calls.send(b, MapGet()) for b in ids)
    newest = cmap.dr
    silent: dict[str, str] = {}
    for b, reply in zip(ids, replies):
        if isinstance(reply, BaseException):
            silent[b] = describe_error(reply)
            continue
        try:
            rec = ClusterMap.from_wire(reply["map"]).dr
        except (KeyError, ValueError, TypeError) as e:
            silent[b] = f"malformed map: {e}"
            continue
        if rec is not None and (newest is None or rec.version > newest.version):
            newest = rec
    return ClusterView(target, cmap, newest, silent)


async def push_dr(reactor: Any, site: ClusterView, record: DRRecord,
                  say: Callable[[str], None], timeout: float = 5.0) -> list[str]:
    """Push ``record`` to every brick of ``site``: the bricks that did not adopt it, each
    with why (gossip brings it to them later).  ``AdminError`` if none adopted it."""
    calls = BrickCaller(reactor, site.target, site.addresses, timeout=timeout,
                        connect_timeout=timeout, reuse=False)
    ids = sorted(site.map.bricks)
    say(f"pushing the DR record (v{record.version}, {record.mode}) to {len(ids)} bricks "
        f"of {site.target.cluster}")
    push = MapPush(records=[record.canonical()])
    replies = await gather(calls.send(b, push) for b in ids)
    problems = []
    for b, reply in zip(ids, replies):
        if isinstance(reply, DDSError):
            problems.append(f"brick {b}: {describe_error(reply)}")
        elif isinstance(reply, BaseException):
            problems.append(f"brick {b}: {reply}")
        elif reply.get("conflicts"):
            problems.append(f"brick {b} holds another DR record at version "
                            f"{record.version} (run `dds-admin repair`)")
    if len(problems) == len(ids):
        raise AdminError(*problems, f"no brick of {site.target.cluster} took the DR "
                         "record: nothing changed")
    return problems
