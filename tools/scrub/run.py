"""One run of ``dds-admin scrub`` against the cluster: each partition's replicas asked
for bucket checksums (twice where they differ) and key listings, then the fixes."""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import DeferredSemaphore

from dds.errors import ProtocolError, Refused, ReplicaDamaged
from dds.maps import ClusterMap
from dds.messages import RangeChecksums, RangeKeys
from dds.partition import PartitionId
from dds.records import RGRecord
from dds.replies import RangeChecksumsReply

from dds.tools import recover as recover_mod
from dds.tools.cluster import BrickCaller, Target, describe_error, fetch_map, gather
from dds.tools.runner import AdminError, pause
from dds.tools.scrub.compare import (MAX_BUCKETS, MAX_KEY_BUCKETS, MAX_KEYS_KEPT, PARALLEL,
                                     TO_FIX, KeyDiff, Options, PartitionResult, agreement,
                                     diff_keys, differing_buckets, finding, fix_plan,
                                     make_report, selected)
from dds.tools.scrub.progress import View

__all__ = ["Scrub", "scrub"]


def _well_formed(reply: Any, buckets: int) -> bool:
    """Whether a ``range_checksums`` reply has its shape and the buckets asked for."""
    try:
        return len(RangeChecksumsReply.from_wire(reply).buckets) == buckets
    except ProtocolError:
        return False


def _problem(brick: str, what: str, error: BaseException) -> str:
    if isinstance(error, AdminError):
        return "; ".join(error.lines)
    return f"{brick}: {what} failed: {describe_error(error)}"


class Scrub:
    """One run of the command: the map, the connections, the options."""

    def __init__(self, reactor: Any, target: Target, cmap: ClusterMap, options: Options,
                 view: View) -> None:
        self.reactor = reactor
        self.target = target
        self.cmap = cmap
        self.options = options
        self.view = view
        self.bricks = BrickCaller(reactor, target,
                                  {b.id: (b.address, b.port) for b in cmap.bricks.values()},
                                  timeout=options.timeout, name_unreachable=True)

    async def _checksums(self, pid: PartitionId, members: list[str],
                         damaged: list[str] | None = None
                         ) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Each member's ``range_checksums`` and the problems; members that answer
        ``ReplicaDamaged`` go to ``damaged`` (when given) instead of the problems."""
        ask = RangeChecksums(pid=str(pid), buckets=self.options.buckets)
        replies = await gather(self.bricks.send(m, ask) for m in members)
        good: dict[str, dict[str, Any]] = {}
        errors = []
        for m, reply in zip(members, replies):
            if isinstance(reply, ReplicaDamaged) and damaged is not None:
                damaged.append(m)
            elif isinstance(reply, BaseException):
                errors.append(_problem(m, f"range_checksums of {pid}", reply))
            elif not _well_formed(reply, self.options.buckets):
                errors.append(f"{m}: malformed range_checksums reply for {pid}")
            else:
                good[m] = reply
        return good, errors

    async def _keys(self, brick: str, pid: PartitionId, bucket: int, buckets: int
                    ) -> list[Any]:
        """A bucket's keys on one brick; a bucket too large for one reply is asked as its
        two halves (buckets nest: see ``bricks/scrub.py``)."""
        try:
            reply = await self.bricks.send(brick, RangeKeys(pid=str(pid), bucket=bucket,
                                                            buckets=buckets))
        except Refused:
            if buckets * 2 > MAX_BUCKETS:
                raise
            low = await self._keys(brick, pid, 2 * bucket, 2 * buckets)
            return low + await self._keys(brick, pid, 2 * bucket + 1, 2 * buckets)
        keys: list[Any] = reply["keys"]
        return keys

    async def check(self, pid: PartitionId, rec: RGRecord) -> PartitionResult:
        began = time.monotonic()
        r = PartitionResult(pid=str(pid), rg=rec.name, members=list(rec.active_members),
                            inactive={m.brick: m.state for m in rec.members
                                      if m.state != "active"})
        try:
            await self._check(pid, r)
        finally:
            r.seconds = time.monotonic() - began
        self.view.done(r)
        return r

    def _take(self, r: PartitionResult, replies: dict[str, dict[str, Any]]) -> None:
        r.lsn = {m: int(reply.get("lsn", 0)) for m, reply in replies.items()}
        r.rows = {m: int(reply.get("rows", 0)) for m, reply in replies.items()}
        r.bytes = max((int(reply.get("bytes", 0)) for reply in replies.values()), default=0)

    async def _check(self, pid: PartitionId, r: PartitionResult) -> None:
        members, buckets, name = r.members, self.options.buckets, str(pid)
        if not members:
            r.state = "error"
            r.errors.append(f"{r.rg} has no active member")
            return
        self.view.phase(name, "checksums")
        first, errors = await self._checksums(pid, members, r.damaged)
        if errors:
            r.state, r.errors = "error", errors
            return
        if r.damaged:
            members = [m for m in members if m not in r.damaged]
            r.state = "damaged"
            if not members:
                return
        self._take(r, first)
        diff = differing_buckets({m: first[m]["buckets"] for m in members})
        if not diff:
            return
        r.rechecked = list(diff)
        self.view.phase(name, f"re-checking {len(diff)} differing bucket(s) after "
                              f"{self.options.recheck_pause:g}s")
        await pause(self.reactor, self.options.recheck_pause)
        second, errors = await self._checksums(pid, members)
        if errors:
            r.state, r.errors = "error", errors
            return
        self._take(r, second)
        again = set(differing_buckets({m: second[m]["buckets"] for m in members}))
        diff = [b for b in diff if b in again]
        by_bucket: dict[int, list[KeyDiff]] = {}
        listed = diff[:MAX_KEY_BUCKETS]
        for i, b in enumerate(listed):
            self.view.phase(name, f"listing keys of bucket {b} ({i + 1}/{len(listed)})")
            results = await gather(self._keys(m, pid, b, buckets) for m in members)
            failed = [_problem(m, f"range_keys of {pid} bucket {b}", e)
                      for m, e in zip(members, results) if isinstance(e, BaseException)]
            if failed:
                r.state, r.errors = "error", failed
                return
            found = diff_keys(dict(zip(members, results)), b)  # type: ignore[arg-type]
            if found:
                by_bucket[b] = found
        # A listed bucket whose keys all agree settled between the checksums and the
        # listing: a write in flight too.
        diff = [b for b in diff if b in by_bucket or b not in listed]
        r.settled = [b for b in r.rechecked if b not in diff]
        if not diff:
            return
        r.state = "differing"
        r.differing_buckets = diff
        r.listed_buckets = [b for b in listed if b in by_bucket]
        every = [k for b in r.listed_buckets for k in by_bucket[b]]
        every.sort(key=lambda k: k.key)
        r.keys_total = len(every)
        r.keys_divergent = sum(1 for k in every if k.divergent)
        r.keys = every[:MAX_KEYS_KEPT]
        signatures = {m: tuple(tuple(k.replicas[m] for k in by_bucket[b]) if b in by_bucket
                               else tuple(second[m]["buckets"][b]) for b in diff)
                      for m in members}
        r.groups, r.majority, r.minority = agreement(members, signatures)

    async def check_many(self, title: str, items: list[tuple[PartitionId, RGRecord]]
                         ) -> list[PartitionResult]:
        self.view.begin(title, len(items))
        limit = DeferredSemaphore(PARALLEL)
        try:
            results = await gather(limit.run(self.check, pid, rec) for pid, rec in items)
        finally:
            self.view.end()
        out = []
        for (pid, rec), res in zip(items, results):
            if isinstance(res, BaseException):
                res = PartitionResult(pid=str(pid), rg=rec.name,
                                      members=list(rec.active_members), state="error",
                                      errors=[f"scrub failed: {describe_error(res)}"])
            out.append(res)
        return out

    async def fix(self, results: list[PartitionResult]) -> list[dict[str, Any]]:
        """Re-copy the minority replicas, RG by RG; then scrub their partitions again."""
        fixes: list[dict[str, Any]] = []
        rgs = sorted({r.rg for r in results if r.state in TO_FIX})
        for rg in rgs:
            rec = self.cmap.rgs[rg]
            checked = {r.pid for r in results}
            rest = [(pid, rec) for pid in sorted(rec.active_partitions)
                    if str(pid) not in checked]
            if rest:
                self.view.note(f"{rg}: checking its other {len(rest)} partition(s) first: "
                               "a re-copy replaces all of them")
                results.extend(await self.check_many(f"scrub of {rg}", rest))
            mine = [r for r in results if r.rg == rg]
            order, reason = fix_plan(rec, mine)
            differing = [r for r in mine if r.state in TO_FIX]
            if reason is not None:
                fixes.append({"rg": rg, "brick": None, "ok": False, "refused": reason,
                              "partitions": [r.pid for r in differing], "errors": [reason],
                              "seconds": 0.0, "bytes": 0})
                continue
            ok = True
            for brick in order:
                fixes.append(await self._recover(rec, brick, differing))
                ok = fixes[-1]["ok"]
                if not ok:
                    break
            if not ok:
                continue
            self.view.note(f"{rg}: scrubbing {', '.join(r.pid for r in differing)} again "
                           "to confirm")
            again = await self.check_many(f"re-scrub of {rg}",
                                          [(PartitionId.parse(r.pid), rec) for r in differing])
            for r, after in zip(differing, again):
                r.fixed = after.state == "clean"
                if not r.fixed:
                    r.errors.append("still " + (finding(after) or after.state) +
                                    " after the re-copy")
        return fixes

    async def _recover(self, rec: RGRecord, brick: str,
                       differing: list[PartitionResult]) -> dict[str, Any]:
        self.view.note(f"{rec.name}: re-copying the replicas of {brick} "
                       f"(minority or damaged in "
                       f"{', '.join(r.pid for r in differing if brick in r.minority + r.damaged)})")
        view = self.view.fix_view(brick)
        try:
            outcome = await recover_mod.recover(
                self.reactor, self.target, brick,
                recover_mod.Options(rg=rec.name, timeout=self.options.fix_timeout), view)
        except AdminError as e:
            outcome = {"ok": False, "errors": e.lines, "rgs": {}, "seconds": 0.0}
        finally:
            view.close()
        row = outcome.get("rgs", {}).get(rec.name) or {}
        return {"rg": rec.name, "brick": brick, "ok": bool(outcome["ok"]), "refused": None,
                "partitions": [r.pid for r in differing if brick in r.minority + r.damaged],
                "errors": list(outcome.get("errors", [])),
                "seconds": outcome.get("seconds", 0.0),
                "bytes": int(row.get("bytes_total") or 0), "source": row.get("source")}



async def scrub(reactor: Any, target: Target, options: Options, view: View
                ) -> dict[str, Any]:
    """Scrub, and with ``options.fix`` fix; the outcome as a plain dict."""
    if not 1 <= options.buckets <= MAX_BUCKETS:
        raise AdminError(f"--buckets must be 1..{MAX_BUCKETS}, got {options.buckets}")
    began = time.monotonic()
    cmap, _seed = await fetch_map(reactor, target)
    items = selected(cmap, options.partition)
    run = Scrub(reactor, target, cmap, options, view)
    fixes: list[dict[str, Any]] = []
    try:
        results = await run.check_many("scrub", items)
        if options.fix:
            fixes = await run.fix(results)
    finally:
        run.bricks.close()
    return make_report(options, results, fixes, time.monotonic() - began)


