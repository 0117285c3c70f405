"""Step (a) of ``dds-admin dr promote``: every replica of every DR partition made to
agree before the site takes writes, the newest version of each key winning
(``promoteplan.newest_fixes``).

It walks the replicas as ``dds-admin scrub`` does (``range_checksums`` per bucket, then
``range_keys`` of the buckets that differ) and, rather than re-copying a whole replica,
reads each newer row from a member holding it (``get`` sent to that brick) and writes it
to the members behind with ``dr_apply`` (at its version, only over an older copy; the
site is still a follower, so ``dr_apply`` is allowed).  A partition is checked again
afterwards; one that still differs (or could not be read) is an error, and the promotion
stops before anything is pushed.
"""

from __future__ import annotations

from typing import Any

import attrs

from dds.drmsgs import MAX_APPLY_ROWS, DrApply
from dds.errors import Refused
from dds.messages import Get, RangeChecksums, RangeKeys
from dds.partition import PartitionId
from dds.records import RGRecord

from dds.tools.cluster import BrickCaller, describe_error, gather
from dds.tools.dr.promoteplan import Fix, newest_fixes
from dds.tools.runner import AdminError
from dds.tools.scrub.compare import MAX_BUCKETS, differing_buckets

__all__ = ["Agreement", "agree_partition", "BUCKETS"]

#: Buckets per partition for the first comparison.
BUCKETS = 64


@attrs.define
class Agreement:
    """What step (a) did to one DR partition."""

    pid: str
    rg: str
    members: list[str]
    buckets_differing: int = 0
    keys_copied: int = 0
    rows_written: int = 0
    divergent: list[bytes] = attrs.field(factory=list)

    def to_wire(self) -> dict[str, Any]:
        return {"pid": self.pid, "rg": self.rg, "members": self.members,
                "buckets_differing": self.buckets_differing,
                "keys_copied": self.keys_copied, "rows_written": self.rows_written,
                "divergent": [k.hex() for k in self.divergent]}


async def _checksums(calls: BrickCaller, pid: str, members: list[str]
                     ) -> dict[str, Any]:
    replies = await gather(calls.send(m, RangeChecksums(pid=pid, buckets=BUCKETS))
                           for m in members)
    bad = [f"{m}: range_checksums of {pid}: {describe_error(r)}"
           for m, r in zip(members, replies) if isinstance(r, BaseException)]
    if bad:
        raise AdminError(*bad)
    return {m: r["buckets"] for m, r in zip(members, replies)}  # type: ignore[index]


async def _keys(calls: BrickCaller, brick: str, pid: str, bucket: int,
                buckets: int) -> list[Any]:
    """A bucket's keys on one brick, asked as its two halves when too large for one
    reply (buckets nest, ``bricks/scrub.py``)."""
    try:
        reply = await calls.send(brick, RangeKeys(pid=pid, bucket=bucket, buckets=buckets))
    except Refused:
        if buckets * 2 > MAX_BUCKETS:
            raise
        low = await _keys(calls, brick, pid, 2 * bucket, 2 * buckets)
        return low + await _keys(calls, brick, pid, 2 * bucket + 1, 2 * buckets)
    keys: list[Any] = reply["keys"]
    return keys


async def _copy(calls: BrickCaller, pid: str, rec: RGRecord, fixes: list[Fix]) -> int:
    """Read each fix's row from its source, write it to its targets; rows written."""
    rows: dict[str, list[tuple[bytes, bytes | None, int]]] = {}
    for fix in fixes:
        got = await calls.send(fix.source, Get(pid=pid, key=fix.key, rg=rec.name,
                                               rg_version=rec.version, rg_fp=rec.fp))
        version = int(got["version"])
        if version < fix.version:
            raise AdminError(f"{pid}: {fix.source} answers {fix.key[:64]!r} at version "
                             f"{version}, below the {fix.version} it listed")
        for target in fix.targets:
            rows.setdefault(target, []).append((fix.key, got["value"], version))
    written = 0
    for target, items in sorted(rows.items()):
        for i in range(0, len(items), MAX_APPLY_ROWS):
            reply = await calls.send(target, DrApply(pid, rec.name, rec.version, rec.fp,
                                                     items[i:i + MAX_APPLY_ROWS], {}))
            written += int(reply.get("applied", 0))
    return written


async def agree_partition(calls: BrickCaller, pid: PartitionId, rec: RGRecord
                          ) -> Agreement:
    """Make the active replicas of ``pid`` agree (module docstring)."""
    text = str(pid)
    members = list(rec.active_members)
    out = Agreement(text, rec.name, members)
    if len(members) < 2:
        return out
    try:
        sums = await _checksums(calls, text, members)
        diff = differing_buckets(sums)
        out.buckets_differing = len(diff)
        for bucket in diff:
            listings = await gather(_keys(calls, m, text, bucket, BUCKETS) for m in members)
            bad = [f"{m}: range_keys of {text}: {describe_error(r)}"
                   for m, r in zip(members, listings) if isinstance(r, BaseException)]
            if bad:
                raise AdminError(*bad)
            fixes, divergent = newest_fixes(dict(zip(members, listings)))  # type: ignore
            out.divergent.extend(divergent)
            out.keys_copied += len(fixes)
            out.rows_written += await _copy(calls, text, rec, fixes)
        if diff:
            again = differing_buckets(await _checksums(calls, text, members))
            if again and not out.divergent:
                raise AdminError(f"{text}: {len(again)} bucket(s) still differ after the "
                                 "copies (is the follower still running? stop it)")
    except AdminError as e:
        raise AdminError(*(f"agreement of {text} ({rec.name}): {line}"
                           for line in e.lines)) from None
    except Exception as e:
        raise AdminError(f"agreement of {text} ({rec.name}): "
                         f"{describe_error(e)}") from None
    return out
