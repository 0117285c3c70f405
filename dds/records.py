"""Map records: cluster, bricks and replica groups (DESIGN §2).

Records are immutable.  Each has its own version; a change makes a new record with
version + 1.  ``fp`` is the 32-bit fingerprint of the record's canonical msgpack encoding,
which every data operation carries so that a brick can tell in O(1) whether the caller
routed by the same record it holds.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Literal, Union

import attrs
import msgpack
import xxhash

from dds.partition import PartitionId

PartitionState = Literal["active", "incoming", "outgoing"]
MemberState = Literal["active", "recovering", "excluded"]
PARTITION_STATES = ("active", "incoming", "outgoing")
#: active: serves and takes every write.  recovering: re-syncing by partition copy (DESIGN
#: §7), takes no writes.  excluded: cut out by a majority after it became unreachable
#: (§5); it comes back only through recovery.
MEMBER_STATES = ("active", "recovering", "excluded")

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _name(inst: object, attribute: "attrs.Attribute[str]", value: str) -> None:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(f"{attribute.name}: invalid name {value!r}")


#: Record versions stay below this bound.  Versions are stored in SQLite (the journal,
#: the transaction log's tables) as INTEGER, a signed 64-bit value: 2**63 and above fail
#: with "Integer value out of range" wherever the record is written, and msgpack carries
#: up to 2**64-1, so a pushed record could get in and break every later change of its RG.
#: 2**62 keeps 2**62 increments of room below the SQLite limit (a change is +1; no count
#: of changes comes near), and a record at a version this high is forged, not grown.
MAX_VERSION = 1 << 62


def _version(inst: object, attribute: "attrs.Attribute[int]", value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{attribute.name}: version must be a non-negative integer")
    if value >= MAX_VERSION:
        raise ValueError(f"{attribute.name}: version {value} is out of range (must be "
                         f"below 2**62 = {MAX_VERSION})")


def fingerprint(canonical: Any) -> int:
    return xxhash.xxh32_intdigest(msgpack.packb(canonical, use_bin_type=True))


@attrs.frozen
class ClusterRecord:
    """Cluster-wide settings: name, replication factor, limits."""

    name: str = attrs.field(validator=_name)
    version: int = attrs.field(validator=_version)
    replication: int = attrs.field(validator=attrs.validators.ge(1))
    max_key_bytes: int = attrs.field(default=1024, validator=attrs.validators.ge(1))
    max_value_bytes: int = attrs.field(default=1 << 20, validator=attrs.validators.ge(0))

    @property
    def record_id(self) -> str:
        return "cluster"

    def canonical(self) -> list[Any]:
        return ["cluster", self.name, self.version, self.replication,
                self.max_key_bytes, self.max_value_bytes]

    @functools.cached_property
    def fp(self) -> int:
        return fingerprint(self.canonical())


DRMode = Literal["primary", "follower"]
DR_MODES = ("primary", "follower")


@attrs.frozen
class DRRecord:
    """This site's part in disaster recovery (DESIGN §12).  No record: a primary without
    a DR site.

    - ``primary`` with ``site`` set: a DR site follows this cluster; write votes carry
      the prepare time and the DR tag (``bricks/drtags.py``).
    - ``follower`` of ``primary`` (that cluster's name): client writes are refused
      (``NotPrimary``); the follower applies the change stream (``dr_apply``).
    - ``primary`` with ``epoch`` > 0: promoted from ``primary`` by ``dds-admin dr
      promote``; until ``replay_until_ms`` (wall clock, ms) only journal replays are
      written (``ReplayWindow`` for the rest), after it replays are refused.
    """

    version: int = attrs.field(validator=_version)
    mode: DRMode = attrs.field(validator=attrs.validators.in_(DR_MODES))
    epoch: int = attrs.field(default=0, validator=_version)
    primary: str = attrs.field(default="", validator=attrs.validators.instance_of(str))
    site: str = attrs.field(default="", validator=attrs.validators.instance_of(str))
    replay_until_ms: int = attrs.field(default=0, validator=_version)

    @property
    def record_id(self) -> str:
        return "dr"

    @property
    def attached(self) -> bool:
        """A DR site follows this primary: votes carry what the client journal needs."""
        return self.mode == "primary" and bool(self.site)

    @property
    def promoted(self) -> bool:
        return self.mode == "primary" and self.epoch > 0

    def canonical(self) -> list[Any]:
        return ["dr", self.version, self.mode, self.epoch, self.primary, self.site,
                self.replay_until_ms]

    @functools.cached_property
    def fp(self) -> int:
        return fingerprint(self.canonical())


#: The mark ``remove-brick`` puts on the ``host`` of a brick it emptied: the brick left
#: every replica group and gets no replicas again (``add-brick`` registers it afresh).
RETIRED = "retired:"
#: The mark ``forget-brick`` puts on a retired brick's ``host``: a map cannot delete a
#: record (gossip would bring it back), so a tombstone at a higher version stands for
#: "no such brick"; ``ClusterMap.bricks`` leaves it out.
FORGOTTEN = "forgotten:"


@attrs.frozen
class BrickRecord:
    """A brick: its id, where it listens, and its failure domain (``host``)."""

    id: str = attrs.field(validator=_name)
    version: int = attrs.field(validator=_version)
    address: str = attrs.field(validator=attrs.validators.instance_of(str))
    port: int = attrs.field(validator=attrs.validators.and_(attrs.validators.ge(1),
                                                            attrs.validators.le(65535)))
    host: str = attrs.field(default="", validator=attrs.validators.instance_of(str))

    @property
    def record_id(self) -> str:
        return f"brick/{self.id}"

    @property
    def failure_domain(self) -> str:
        return self.host or self.address

    @property
    def retired(self) -> bool:
        """Emptied by ``remove-brick`` (forgotten ones included)."""
        return self.host.startswith((RETIRED, FORGOTTEN))

    @property
    def forgotten(self) -> bool:
        """A tombstone left by ``forget-brick``: the brick is gone for good."""
        return self.host.startswith(FORGOTTEN)

    def canonical(self) -> list[Any]:
        return ["brick", self.id, self.version, self.address, self.port, self.host]

    @functools.cached_property
    def fp(self) -> int:
        return fingerprint(self.canonical())


@attrs.frozen
class Member:
    brick: str = attrs.field(validator=_name)
    state: MemberState = attrs.field(default="active",
                                     validator=attrs.validators.in_(MEMBER_STATES))


@attrs.frozen
class PartitionEntry:
    pid: PartitionId = attrs.field(validator=attrs.validators.instance_of(PartitionId))
    state: PartitionState = attrs.field(default="active",
                                        validator=attrs.validators.in_(PARTITION_STATES))


def _members(inst: object, attribute: object, value: tuple[Member, ...]) -> None:
    names = [m.brick for m in value]
    if len(set(names)) != len(names):
        raise ValueError(f"replica group lists a brick twice: {names}")


def _member_tuple(value: Any) -> tuple[Member, ...]:
    return tuple(value)


def _sorted_partitions(value: Any) -> tuple[PartitionEntry, ...]:
    return tuple(sorted(value, key=lambda e: e.pid))


@attrs.frozen
class RGRecord:
    """A replica group: its members (in order) and the partitions it serves."""

    name: str = attrs.field(validator=_name)
    version: int = attrs.field(validator=_version)
    members: tuple[Member, ...] = attrs.field(converter=_member_tuple,
                                                validator=_members)
    partitions: tuple[PartitionEntry, ...] = attrs.field(converter=_sorted_partitions)

    @property
    def record_id(self) -> str:
        return f"rg/{self.name}"

    def canonical(self) -> list[Any]:
        return ["rg", self.name, self.version,
                [[m.brick, m.state] for m in self.members],
                [[str(e.pid), e.state] for e in self.partitions]]

    @functools.cached_property
    def fp(self) -> int:
        return fingerprint(self.canonical())

    @functools.cached_property
    def active_members(self) -> tuple[str, ...]:
        return tuple(m.brick for m in self.members if m.state == "active")

    def member_state(self, brick: str) -> MemberState | None:
        for m in self.members:
            if m.brick == brick:
                return m.state
        return None

    def with_member_state(self, brick: str, state: MemberState) -> "RGRecord":
        """The next version of this record with ``brick``'s state changed."""
        if self.member_state(brick) is None:
            raise ValueError(f"{brick} is not a member of {self.name}")
        return self.with_changes(members=[Member(m.brick, state) if m.brick == brick else m
                                          for m in self.members])

    @property
    def quorum(self) -> int:
        """YES votes a change of this record needs (DESIGN §5): a majority of its active
        members.  Two changes from this version always share a voter."""
        return len(self.active_members) // 2 + 1

    def partition_state(self, pid: PartitionId) -> PartitionState | None:
        for e in self.partitions:
            if e.pid == pid:
                return e.state
        return None

    @functools.cached_property
    def active_partitions(self) -> frozenset[PartitionId]:
        return frozenset(e.pid for e in self.partitions if e.state == "active")

    def serves(self, pid: PartitionId, brick: str) -> bool:
        """Whether ``brick`` may serve data operations of ``pid`` under this record."""
        return pid in self.active_partitions and brick in self.active_members

    def with_changes(self, **changes: Any) -> "RGRecord":
        """The next version of this record with ``changes`` applied."""
        return attrs.evolve(self, version=self.version + 1, **changes)


Record = Union[ClusterRecord, BrickRecord, RGRecord, DRRecord]


def record_to_wire(record: Record) -> list[Any]:
    return record.canonical()


def record_from_wire(data: Any) -> Record:
    """Decode a record sent by a peer; ``ValueError`` names what is wrong."""
    try:
        kind = data[0]
        if kind == "cluster":
            _, name, version, repl, mk, mv = data
            return ClusterRecord(name, version, repl, mk, mv)
        if kind == "brick":
            _, bid, version, address, port, host = data
            return BrickRecord(bid, version, address, port, host)
        if kind == "rg":
            _, name, version, members, parts = data
            mlist: list[Member] = [Member(b, s) for b, s in members]
            plist: list[PartitionEntry] = [PartitionEntry(PartitionId.parse(p), s)
                                           for p, s in parts]
            return RGRecord(name, version, mlist, plist)
        if kind == "dr":
            _, version, mode, epoch, primary, site, until = data
            return DRRecord(version, mode, epoch, primary, site, until)
    except (TypeError, ValueError, IndexError, KeyError) as e:
        raise ValueError(f"malformed record{_named(data)}: {e}") from None
    raise ValueError(f"malformed record: unknown kind {data[0]!r:.40}")


def _named(data: Any) -> str:
    """`` rg/NAME`` (or ``brick/ID``, `` cluster``) for an error about a record on the
    wire, when its first fields can be read; the operator needs to know which one."""
    try:
        kind, name = data[0], data[1]
    except (TypeError, IndexError, KeyError):
        return ""
    if kind == "cluster":
        return " cluster"
    if kind == "dr":
        return " dr"
    if kind in ("rg", "brick") and isinstance(name, str):
        return f" {kind}/{name[:64]}"
    return ""
