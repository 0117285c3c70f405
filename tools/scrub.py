"""``dds-admin scrub [PARTITION]``: compare the replicas of partitions, report the keys
that differ, and with ``--fix`` re-copy a replica that disagrees with the majority.

For each partition (or the one given) every active member of its RG is asked for
``range_checksums``: the replica cut into key-hash buckets, a count and an
order-independent checksum per bucket (``bricks/scrub.py`` defines the buckets).  Equal
checksums everywhere: the replicas agree.  Otherwise:

1. **Re-check.**  Writes may be in flight: a bucket can differ for the moment one replica
   has committed a write another has not yet.  So the differing buckets are asked again
   after a short pause (:data:`RECHECK_PAUSE_S`); only those that differ both times are
   reported, and the output says how many settled.
2. **Keys.**  For each bucket that still differs (at most :data:`MAX_KEY_BUCKETS` of
   them) every member lists the bucket's keys with version and value hash
   (``range_keys``); each key whose replicas disagree is reported with every replica's
   version.  Same version with different values is *divergence* (the replicas took
   different writes for the same version); different versions mean a replica missed
   writes.  A bucket whose listings agree after all settled meanwhile.
3. **Majority.**  Members are grouped by what they hold in the differing buckets.  A
   group larger than half the active members is the majority; the others are the
   minority.  No majority (three different replicas, two members that differ): reported,
   and ``--fix`` refuses.
4. **Fix** (``--fix``).  A minority brick re-copies its replicas by the ``recover`` RPC
   for the RG (DESIGN §7; what ``dds-admin recover`` does), followed until it is done and
   the brick is active again, then the partition is scrubbed again to confirm.  Recovery
   re-copies *every* partition of the RG from an active member the brick chooses, so
   before fixing, every partition of the RG is checked (also those not asked for), and
   the fix is refused when that member could be a minority replica itself, or when any
   partition of the RG has no majority or could not be compared.
5. **Damaged replicas.**  A member whose replica cannot be read answers ``ReplicaDamaged``
   (``bricks/damage.py``): it has set the file aside and re-copies the RG by itself.  The
   partition is compared on the other members; its state is ``damaged`` (or
   ``differing``, if those differ too), and ``--fix`` follows that member's re-copy like
   any other (``recover`` finds it running) and scrubs the partition again to confirm.

The outcome is a plain dict (what ``--json`` prints); :func:`render` draws it for
people.  Progress goes through a :class:`View`.  ``ok`` (exit status 0) means every
replica of every checked partition agrees, or was fixed and confirmed.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Protocol

import attrs
from rich.console import Console
from rich.filesize import decimal
from rich.markup import escape
from rich.progress import (BarColumn, DownloadColumn, Progress, TaskID, TextColumn,
                           TimeRemainingColumn, TransferSpeedColumn)
from rich.table import Table
from twisted.internet.defer import Deferred, DeferredSemaphore

from dds.errors import DDSError, Refused, ReplicaDamaged
from dds.maps import ClusterMap
from dds.partition import PartitionId
from dds.records import RGRecord
from dds.rpc import RPCProtocol

from dds.tools import recover as recover_mod
from dds.tools.cluster import Target, connect_brick, describe_error, fetch_map, gather
from dds.tools.runner import AdminError, pause
from dds.tools.txns import cut, key_text

__all__ = ["Options", "View", "QuietView", "ProgressView", "KeyDiff", "PartitionResult",
           "scrub", "render", "differing_buckets", "diff_keys", "agreement", "fix_plan"]

#: Seconds allowed to connect to a brick and for the map.
CALL_TIMEOUT_S = 5.0
#: Pause before differing buckets are asked again (a write in flight settles in ms).
RECHECK_PAUSE_S = 0.5
#: Partitions scrubbed at once (each keeps a worker thread busy on every member).
PARALLEL = 4
#: Differing buckets of one partition whose keys are listed (each listing is a scan of
#: the replica on every member); the others are counted, and still decide the majority.
MAX_KEY_BUCKETS = 16
#: Differing keys kept per partition in the outcome (all are counted).
MAX_KEYS_KEPT = 1000
#: Differing keys shown per partition by :func:`render`.
MAX_KEYS_SHOWN = 20
MAX_BUCKETS = 65536


@attrs.frozen
class Options:
    partition: str | None = None
    buckets: int = 64
    fix: bool = False
    #: Seconds allowed for one ``range_checksums`` / ``range_keys`` request: a scan of a
    #: large replica takes seconds.
    timeout: float = 120.0
    recheck_pause: float = RECHECK_PAUSE_S
    #: Seconds allowed for each re-copy of ``--fix``.
    fix_timeout: float = 600.0


# -- findings ------------------------------------------------------------------------------

#: What one replica holds of a key: (version, value hash or None for a tombstone), or
#: None when the key is not there at all.
KeyState = tuple[int, "int | None"] | None


@attrs.define
class KeyDiff:
    """One key whose replicas disagree."""

    key: bytes
    bucket: int
    replicas: dict[str, KeyState]

    @property
    def divergent(self) -> bool:
        """Two replicas hold the same version with different values (or one a tombstone):
        they took different writes, not merely more or fewer of them."""
        seen: dict[int, set[int | None]] = defaultdict(set)
        for state in self.replicas.values():
            if state is not None:
                seen[state[0]].add(state[1])
        return any(len(hashes) > 1 for hashes in seen.values())

    def to_wire(self) -> dict[str, Any]:
        return {"key": key_text(self.key), "key_hex": self.key.hex(), "bucket": self.bucket,
                "divergent": self.divergent,
                "replicas": {b: None if s is None else
                             {"version": s[0], "tombstone": s[1] is None,
                              "value_hash": None if s[1] is None else f"{s[1]:016x}"}
                             for b, s in self.replicas.items()}}


@attrs.define
class PartitionResult:
    """What the scrub found of one partition.  ``state``: clean, differing or error."""

    pid: str
    rg: str
    members: list[str]
    #: Members of the RG that are not active (their replicas are not compared).
    inactive: dict[str, str] = attrs.field(factory=dict)
    state: str = "clean"
    lsn: dict[str, int] = attrs.field(factory=dict)
    rows: dict[str, int] = attrs.field(factory=dict)
    bytes: int = 0
    #: Buckets that differed at the first look, and those of them that then agreed.
    rechecked: list[int] = attrs.field(factory=list)
    settled: list[int] = attrs.field(factory=list)
    differing_buckets: list[int] = attrs.field(factory=list)
    listed_buckets: list[int] = attrs.field(factory=list)
    keys: list[KeyDiff] = attrs.field(factory=list)
    keys_total: int = 0
    #: Of them, keys whose replicas hold the same version with different values.
    keys_divergent: int = 0
    groups: list[list[str]] = attrs.field(factory=list)
    majority: list[str] | None = None
    minority: list[str] = attrs.field(factory=list)
    errors: list[str] = attrs.field(factory=list)
    #: After ``--fix``: whether a second scrub found the replicas agreeing.
    fixed: bool | None = None
    seconds: float = 0.0
    #: Members whose replica could not be read (``ReplicaDamaged``): not compared, to
    #: be re-copied.
    damaged: list[str] = attrs.field(factory=list)

    def to_wire(self) -> dict[str, Any]:
        return {"pid": self.pid, "rg": self.rg, "members": self.members,
                "inactive": self.inactive, "state": self.state, "lsn": self.lsn,
                "rows": self.rows, "bytes": self.bytes, "rechecked": self.rechecked,
                "settled": self.settled, "differing_buckets": self.differing_buckets,
                "listed_buckets": self.listed_buckets, "keys_total": self.keys_total,
                "keys_divergent": self.keys_divergent,
                "keys": [k.to_wire() for k in self.keys], "groups": self.groups,
                "majority": self.majority, "minority": self.minority,
                "errors": self.errors, "fixed": self.fixed, "damaged": self.damaged,
                "seconds": round(self.seconds, 3)}


#: Partition states that ``--fix`` repairs: replicas that differ, or one unreadable.
_TO_FIX = ("differing", "damaged")


def differing_buckets(sums: dict[str, Sequence[Sequence[int]]]) -> list[int]:
    """Buckets whose ``[count, checksum]`` is not the same on every replica."""
    lists = list(sums.values())
    if not lists:
        return []
    return [b for b in range(len(lists[0]))
            if any(tuple(other[b]) != tuple(lists[0][b]) for other in lists[1:])]


def diff_keys(listings: dict[str, Sequence[Sequence[Any]]], bucket: int = 0
              ) -> list[KeyDiff]:
    """The keys on which ``range_keys`` listings (brick → ``[[key, version, value_hash],
    ...]``) disagree, sorted by key."""
    table: dict[bytes, dict[str, KeyState]] = defaultdict(dict)
    for brick, entries in listings.items():
        for key, version, vhash in entries:
            table[bytes(key)][brick] = (int(version), None if vhash is None else int(vhash))
    out = []
    for key in sorted(table):
        states = {brick: table[key].get(brick) for brick in listings}
        if len(set(states.values())) > 1:
            out.append(KeyDiff(key, bucket, states))
    return out


def agreement(members: Sequence[str], signatures: dict[str, Any]
              ) -> tuple[list[list[str]], list[str] | None, list[str]]:
    """Members grouped by equal ``signatures`` (largest group first), the majority group
    (more than half of ``members``) or None, and the members outside it."""
    by_sig: dict[Any, list[str]] = {}
    for m in members:
        by_sig.setdefault(signatures[m], []).append(m)
    groups = sorted(by_sig.values(), key=lambda g: (-len(g), members.index(g[0])))
    if groups and 2 * len(groups[0]) > len(members):
        return groups, groups[0], [m for m in members if m not in groups[0]]
    return groups, None, []


def _groups_text(groups: list[list[str]]) -> str:
    return "; ".join(" ".join(g) for g in groups)


def fix_plan(rec: RGRecord, results: Sequence[PartitionResult]
             ) -> tuple[list[str], str | None]:
    """The bricks to re-copy in RG ``rec`` (in order), or why not: ``results`` must cover
    every active partition of the RG, since a re-copy replaces them all.

    The recovering brick copies from the first active member of the record other than
    itself (``bricks/recovery.py``), so that member must not be a minority replica still
    to be fixed: its copy would spread the bad rows, and could turn a majority."""
    checked = {r.pid for r in results}
    unchecked = sorted(str(p) for p in rec.active_partitions if str(p) not in checked)
    if unchecked:
        return [], (f"{', '.join(unchecked)} of {rec.name} not checked; a re-copy "
                    "replaces every partition of the RG")
    failed = [r.pid for r in results if r.state == "error"]
    if failed:
        return [], (f"{', '.join(failed)} of {rec.name} could not be compared; a re-copy "
                    "replaces every partition of the RG")
    differing = [r for r in results if r.state in _TO_FIX]
    if not differing:
        return [], None
    for r in differing:
        if r.state == "differing" and r.majority is None:
            return [], (f"{r.pid}: no majority of {rec.name}'s {len(r.members)} replicas "
                         f"agrees (groups: {_groups_text(r.groups)}); cannot tell which is "
                         "right, refusing to fix")
    bad = {m for r in differing for m in r.minority + r.damaged}
    active = list(rec.active_members)
    order: list[str] = []
    for m in [b for b in active if b in bad]:
        source = next((b for b in active if b != m), None)
        if source is None or (source in bad and source not in order):
            return [], (f"re-copying {m} would copy from {source}, itself a minority "
                        f"replica in {rec.name}; refusing to fix (re-copy by hand with "
                        "`dds-admin recover`, from a majority member)")
        order.append(m)
    return order, None


# -- progress ------------------------------------------------------------------------------

class View(Protocol):
    """Where progress goes while the command works."""

    def begin(self, title: str, count: int) -> None: ...

    def phase(self, pid: str, text: str) -> None: ...

    def done(self, result: PartitionResult) -> None: ...

    def end(self) -> None: ...

    def note(self, text: str) -> None: ...

    def fix_view(self, brick: str) -> recover_mod.View: ...


class QuietView:
    """No progress at all (``--json``: stdout gets the one final object, nothing else)."""

    def begin(self, title: str, count: int) -> None:
        pass

    def phase(self, pid: str, text: str) -> None:
        pass

    def done(self, result: PartitionResult) -> None:
        pass

    def end(self) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def fix_view(self, brick: str) -> recover_mod.View:
        return recover_mod.QuietView()


class ProgressView:
    """On a terminal: an overall bar (bytes checked, rate, time left, estimated from the
    partitions done so far) and a line per partition being scrubbed, with its phase.
    Everywhere: a line per partition whose replicas differ or could not be compared, so
    a log that is not a terminal still shows the findings as they come."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None
        self.total: TaskID | None = None
        self.tasks: dict[str, TaskID] = {}
        self.count = self.finished = self.checked_bytes = 0
        self.title = ""

    def begin(self, title: str, count: int) -> None:
        self.end()
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 DownloadColumn(), TransferSpeedColumn(),
                                 TimeRemainingColumn(), console=self.console,
                                 disable=not self.console.is_terminal)
        self.title, self.count, self.finished, self.checked_bytes = title, count, 0, 0
        self.tasks = {}
        self.total = self.progress.add_task(self._total_text(), total=None)
        self.progress.start()

    def _total_text(self) -> str:
        return f"{self.title}: {self.finished}/{self.count} partitions"

    def phase(self, pid: str, text: str) -> None:
        if self.progress is None:
            return
        task = self.tasks.get(pid)
        if task is None:
            task = self.tasks[pid] = self.progress.add_task("", total=None)
        self.progress.update(task, description=f"  {pid} {text}")

    def done(self, result: PartitionResult) -> None:
        if self.progress is not None and self.total is not None:
            task = self.tasks.pop(result.pid, None)
            if task is not None:
                self.progress.remove_task(task)
            self.finished += 1
            self.checked_bytes += result.bytes
            left = self.count - self.finished
            estimate = self.checked_bytes + (self.checked_bytes // self.finished) * left
            self.progress.update(self.total, completed=self.checked_bytes,
                                 total=max(estimate, 1) if left else
                                 max(self.checked_bytes, 1),
                                 description=self._total_text())
            if not left:
                self.progress.update(self.total, completed=max(self.checked_bytes, 1))
        line = _finding(result)
        if result.state != "clean" and line:
            colour = "red" if result.state == "error" or result.majority is None else "yellow"
            self.console.print(f"[{colour}]{escape(line)}[/{colour}]")

    def end(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def note(self, text: str) -> None:
        self.console.print(f"[dim]{escape(text)}[/dim]")

    def fix_view(self, brick: str) -> recover_mod.View:
        return recover_mod.ProgressView(self.console, brick)


def _finding(r: PartitionResult) -> str:
    """One line on a partition that is not clean."""
    if r.state == "error":
        return f"{r.pid} ({r.rg}): not compared: {'; '.join(r.errors)}"
    if r.state == "damaged":
        return (f"{r.pid} ({r.rg}): the replica of {' '.join(r.damaged)} is damaged "
                "(unreadable; the brick re-copies it)")
    if r.state != "differing":
        return ""
    keys = f"{r.keys_total} key(s)" if r.listed_buckets else "keys not listed"
    more = "" if len(r.listed_buckets) == len(r.differing_buckets) else \
        f", keys listed for {len(r.listed_buckets)} of them"
    who = (f"minority {' '.join(r.minority)}" if r.majority is not None else
           f"no majority ({_groups_text(r.groups)})")
    return (f"{r.pid} ({r.rg}): {keys} differ in {len(r.differing_buckets)} bucket(s)"
            f"{more}; {who}")


# -- talking to the bricks -------------------------------------------------------------------

class _Bricks:
    """One connection per brick for the whole command, opened on first use and again if
    it drops; a brick that answers under another id is refused."""

    def __init__(self, reactor: Any, target: Target, cmap: ClusterMap,
                 timeout: float) -> None:
        self.reactor = reactor
        self.target = target
        self.cmap = cmap
        self.timeout = timeout
        self._conns: dict[str, RPCProtocol] = {}
        self._waiting: dict[str, list[Deferred[RPCProtocol]]] = {}

    async def _connect(self, brick: str) -> RPCProtocol:
        rec = self.cmap.bricks.get(brick)
        if rec is None:
            raise AdminError(f"brick {brick} is not in the map")
        where = f"brick {brick} at {rec.address}:{rec.port}"
        try:
            conn = await connect_brick(self.reactor, rec.address, rec.port, self.target,
                                       CALL_TIMEOUT_S)
        except DDSError as e:
            raise AdminError(f"{where} does not answer: {describe_error(e)}") from None
        if conn.peer_id != brick:
            conn.close()
            raise AdminError(f"{where} answers as {conn.peer_id!r}")
        return conn

    async def conn(self, brick: str) -> RPCProtocol:
        conn = self._conns.get(brick)
        if conn is not None and not conn.closed.called:
            return conn
        waiting = self._waiting.get(brick)
        if waiting is not None:             # a connect is under way: share it
            d: Deferred[RPCProtocol] = Deferred()
            waiting.append(d)
            return await d
        waiting = self._waiting[brick] = []
        try:
            conn = await self._connect(brick)
        except Exception as e:
            del self._waiting[brick]
            for d in waiting:
                d.errback(e)
            raise
        del self._waiting[brick]
        self._conns[brick] = conn
        for d in waiting:
            d.callback(conn)
        return conn

    async def call(self, brick: str, mtype: str, body: dict[str, Any]) -> Any:
        conn = await self.conn(brick)
        return await conn.call(mtype, body, timeout=self.timeout)

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()


def _problem(brick: str, what: str, error: BaseException) -> str:
    if isinstance(error, AdminError):
        return "; ".join(error.lines)
    return f"{brick}: {what} failed: {describe_error(error)}"


class _Scrub:
    """One run of the command: the map, the connections, the options."""

    def __init__(self, reactor: Any, target: Target, cmap: ClusterMap, options: Options,
                 view: View) -> None:
        self.reactor = reactor
        self.target = target
        self.cmap = cmap
        self.options = options
        self.view = view
        self.bricks = _Bricks(reactor, target, cmap, options.timeout)

    async def _checksums(self, pid: PartitionId, members: list[str],
                         damaged: list[str] | None = None
                         ) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Each member's ``range_checksums`` and the problems; members that answer
        ``ReplicaDamaged`` go to ``damaged`` (when given) instead of the problems."""
        body = {"pid": str(pid), "buckets": self.options.buckets}
        replies = await gather(self.bricks.call(m, "range_checksums", body) for m in members)
        good: dict[str, dict[str, Any]] = {}
        errors = []
        for m, reply in zip(members, replies):
            if isinstance(reply, ReplicaDamaged) and damaged is not None:
                damaged.append(m)
            elif isinstance(reply, BaseException):
                errors.append(_problem(m, f"range_checksums of {pid}", reply))
            elif (not isinstance(reply, dict) or not isinstance(reply.get("buckets"), list)
                  or len(reply["buckets"]) != self.options.buckets):
                errors.append(f"{m}: malformed range_checksums reply for {pid}")
            else:
                good[m] = reply
        return good, errors

    async def _keys(self, brick: str, pid: PartitionId, bucket: int, buckets: int
                    ) -> list[Any]:
        """A bucket's keys on one brick; a bucket too large for one reply is asked as its
        two halves (buckets nest: see ``bricks/scrub.py``)."""
        try:
            reply = await self.bricks.call(brick, "range_keys", {
                "pid": str(pid), "bucket": bucket, "buckets": buckets})
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
        rgs = sorted({r.rg for r in results if r.state in _TO_FIX})
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
            differing = [r for r in mine if r.state in _TO_FIX]
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
                    r.errors.append("still " + (_finding(after) or after.state) +
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


def _selected(cmap: ClusterMap, partition: str | None) -> list[tuple[PartitionId, RGRecord]]:
    owners = cmap.partition_rg
    if partition is None:
        return [(pid, owners[pid]) for pid in sorted(owners)]
    try:
        pid = PartitionId.parse(partition)
    except ValueError as e:
        raise AdminError(str(e)) from None
    if pid not in owners:
        some = ", ".join(str(p) for p in sorted(owners)[:8])
        raise AdminError(f"{pid} is not an active partition in the map (partitions: "
                         f"{some}{', ...' if len(owners) > 8 else ''})")
    return [(pid, owners[pid])]


async def scrub(reactor: Any, target: Target, options: Options, view: View
                ) -> dict[str, Any]:
    """Scrub, and with ``options.fix`` fix; the outcome as a plain dict."""
    if not 1 <= options.buckets <= MAX_BUCKETS:
        raise AdminError(f"--buckets must be 1..{MAX_BUCKETS}, got {options.buckets}")
    began = time.monotonic()
    cmap, _seed = await fetch_map(reactor, target, CALL_TIMEOUT_S)
    items = _selected(cmap, options.partition)
    run = _Scrub(reactor, target, cmap, options, view)
    fixes: list[dict[str, Any]] = []
    try:
        results = await run.check_many("scrub", items)
        if options.fix:
            fixes = await run.fix(results)
    finally:
        run.bricks.close()
    return _report(options, results, fixes, time.monotonic() - began)


def _report(options: Options, results: list[PartitionResult], fixes: list[dict[str, Any]],
            seconds: float) -> dict[str, Any]:
    results = sorted(results, key=lambda r: PartitionId.parse(r.pid))
    differing = [r for r in results if r.state in _TO_FIX]
    errors = [f"{r.pid} ({r.rg}): {e}" for r in results for e in r.errors]
    errors += [f"{_finding(r)}" for r in differing if r.state == "damaged" and not r.fixed]
    errors += [f"{f['rg']}: not fixed: {f['refused']}" for f in fixes if f["refused"]]
    errors += [f"{f['rg']}: re-copy of {f['brick']} failed: {e}" for f in fixes
               if not f["refused"] and not f["ok"] for e in f["errors"]]
    ok = (not any(r.state == "error" for r in results)
          and all(r.fixed for r in differing) and not any(not f["ok"] for f in fixes))
    return {
        "ok": ok, "partition": options.partition, "buckets": options.buckets,
        "fix": options.fix, "recheck_pause_s": options.recheck_pause,
        "partitions_checked": len(results),
        "partitions_differing": sum(1 for r in differing if r.state == "differing"),
        "partitions_damaged": sum(1 for r in differing if r.state == "damaged"),
        "partitions_unchecked": sum(1 for r in results if r.state == "error"),
        "keys_differing": sum(r.keys_total for r in differing),
        "replicas_damaged": sorted({f"{b}:{r.pid}" for r in differing for b in r.damaged}),
        "keys_divergent": sum(r.keys_divergent for r in differing),
        "buckets_settled": sum(len(r.settled) for r in results),
        "fixes_done": sum(1 for f in fixes if f["ok"]),
        "partitions_fixed": sum(1 for r in differing if r.fixed),
        "fixes": fixes, "errors": errors,
        "bytes": sum(r.bytes for r in results),
        "seconds": round(seconds, 3),
        "partitions": [r.to_wire() for r in results],
    }


# -- rendering --------------------------------------------------------------------------------

def _state_cell(state: dict[str, Any] | None) -> str:
    if state is None:
        return "[dim]absent[/dim]"
    if state["tombstone"]:
        return f"v{state['version']} removed"
    return f"v{state['version']} #{state['value_hash'][:8]}"


def _key_note(k: dict[str, Any]) -> str:
    if k["divergent"]:
        return "[red]diverged: same version, different value[/red]"
    absent = [b for b, state in k["replicas"].items() if state is None]
    return f"absent on {' '.join(absent)}" if absent else "versions differ"


def render(report: dict[str, Any], console: Console) -> None:
    """The outcome for people: each partition that differs with its keys, the fixes, and
    a summary."""
    for p in report["partitions"]:
        if p["state"] == "clean":
            continue
        if p["state"] == "error":
            console.print(f"[red]{p['pid']} ({p['rg']}): not compared[/red]")
            continue
        if p["damaged"]:
            console.print(f"[red]{p['pid']} ({p['rg']}): the replica of "
                          f"{' '.join(p['damaged'])} is damaged (unreadable): set aside by "
                          "its brick, which copies it again from the RG[/red]")
            if p["state"] == "damaged":
                if p["fixed"] is not None:
                    console.print("  [green]fixed: the replicas agree now[/green]"
                                  if p["fixed"] else "  [red]not fixed[/red]")
                continue
        note = (f"{len(p['differing_buckets'])} of {report['buckets']} bucket(s) differ "
                f"(seen twice, {report['recheck_pause_s']:g}s apart)")
        who = (f"majority {' '.join(p['majority'])}, minority {' '.join(p['minority'])}"
               if p["majority"] is not None else
               f"[red]no majority[/red] (groups: {escape(_groups_text(p['groups']))})")
        console.print(f"[bold]{p['pid']}[/bold] ({p['rg']}: {' '.join(p['members'])}): "
                      f"{p['keys_total']} key(s) differ; {note}; {who}")
        if p["keys"]:
            t = Table(title_justify="left")
            t.add_column("key")
            for m in p["members"]:
                t.add_column(m)
            t.add_column("")
            for k in p["keys"][:MAX_KEYS_SHOWN]:
                t.add_row(escape(cut(k["key"])), *[_state_cell(k["replicas"][m])
                                                     for m in p["members"]],
                          _key_note(k))
            console.print(t)
            if p["keys_total"] > MAX_KEYS_SHOWN:
                console.print(f"  ... and {p['keys_total'] - MAX_KEYS_SHOWN} more key(s) "
                              f"(--json lists up to {MAX_KEYS_KEPT})")
        unlisted = len(p["differing_buckets"]) - len(p["listed_buckets"])
        if unlisted > 0:
            console.print(f"  keys of {unlisted} more differing bucket(s) not listed")
        if p["fixed"] is not None:
            console.print("  [green]fixed: the replicas agree now[/green]" if p["fixed"]
                          else "  [red]not fixed[/red]")
    for f in report["fixes"]:
        if f["refused"]:
            continue
        how = (f"re-copied {decimal(f['bytes'])} from {f.get('source') or '?'} in "
               f"{f['seconds']:.1f}s" if f["ok"] else "re-copy failed")
        console.print(f"{f['rg']}: {f['brick']}: {how}")
    inactive = sorted({(p["rg"], b, state) for p in report["partitions"]
                       for b, state in p["inactive"].items()})
    for rg, brick, state in inactive:
        console.print(f"[yellow]{brick} is {state} in {rg}: its replicas were not "
                      "compared[/yellow]")
    n = report["partitions_checked"]
    settled = report["buckets_settled"]
    if settled:
        console.print(f"[dim]{settled} bucket(s) differed at first and agreed when checked "
                      f"again {report['recheck_pause_s']:g}s later (writes in flight)[/dim]")
    summary = (f"{n} partition(s), {decimal(report['bytes'])} checked in "
               f"{report['seconds']:.1f}s")
    if report["ok"] and not report["partitions_differing"] and \
            not report["partitions_damaged"]:
        console.print(f"[green]all replicas agree: {summary}[/green]")
    elif report["ok"]:
        console.print(f"[green]{report['partitions_fixed']} partition(s) fixed; all "
                      f"replicas agree now: {summary}[/green]")
    else:
        parts = []
        if report["partitions_differing"]:
            parts.append(f"{report['partitions_differing']} partition(s) differ "
                         f"({report['keys_differing']} key(s), {report['keys_divergent']} "
                         "divergent)")
        if report["partitions_damaged"]:
            parts.append(f"{report['partitions_damaged']} partition(s) with a damaged "
                         "replica")
        if report["partitions_unchecked"]:
            parts.append(f"{report['partitions_unchecked']} could not be compared")
        hint = "" if report["fix"] or not (report["partitions_differing"]
                                           or report["partitions_damaged"]) else \
            "; `dds-admin scrub --fix` re-copies a minority replica"
        console.print(f"[red]{'; '.join(parts) or 'not fixed'}: {summary}{hint}[/red]")
