"""What ``dds-admin scrub`` compares and concludes, without any I/O: the options, the
findings (:class:`KeyDiff`, :class:`PartitionResult`), differing buckets and keys, the
majority, the fix plan, and the report (what ``--json`` prints)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import attrs

from dds.maps import ClusterMap
from dds.partition import PartitionId
from dds.records import RGRecord

from dds.tools.errors import AdminError
from dds.tools.keytext import key_text

__all__ = ["Options", "KeyState", "KeyDiff", "PartitionResult", "TO_FIX",
           "differing_buckets", "diff_keys", "agreement", "groups_text", "fix_plan",
           "finding", "selected", "make_report", "RECHECK_PAUSE_S", "PARALLEL",
           "MAX_KEY_BUCKETS", "MAX_KEYS_KEPT", "MAX_KEYS_SHOWN", "MAX_BUCKETS"]

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
TO_FIX = ("differing", "damaged")


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


def groups_text(groups: list[list[str]]) -> str:
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
    differing = [r for r in results if r.state in TO_FIX]
    if not differing:
        return [], None
    for r in differing:
        if r.state == "differing" and r.majority is None:
            return [], (f"{r.pid}: no majority of {rec.name}'s {len(r.members)} replicas "
                         f"agrees (groups: {groups_text(r.groups)}); cannot tell which is "
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



def finding(r: PartitionResult) -> str:
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
           f"no majority ({groups_text(r.groups)})")
    return (f"{r.pid} ({r.rg}): {keys} differ in {len(r.differing_buckets)} bucket(s)"
            f"{more}; {who}")



def selected(cmap: ClusterMap, partition: str | None) -> list[tuple[PartitionId, RGRecord]]:
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



def make_report(options: Options, results: list[PartitionResult],
                fixes: list[dict[str, Any]],
            seconds: float) -> dict[str, Any]:
    results = sorted(results, key=lambda r: PartitionId.parse(r.pid))
    differing = [r for r in results if r.state in TO_FIX]
    errors = [f"{r.pid} ({r.rg}): {e}" for r in results for e in r.errors]
    errors += [f"{finding(r)}" for r in differing if r.state == "damaged" and not r.fixed]
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

