"""Recovery by partition copy (DESIGN §7): the target's requests to the source, the
operator's ``recover`` and an RG's status."""

from __future__ import annotations

from typing import ClassVar

import attrs
from attrs import validators as v

from dds.messages.base import (Message, PEERS, _session, _str, _u64)


# -- recovery by partition copy (DESIGN §7) -----------------------------------------------

@attrs.frozen
class CopyBegin(Message):
    """The recovering brick ``target`` asks an active member for a copy of every partition
    of ``rg``.  The source snapshots each (SQLite online backup).  With ``full_lease`` it
    fences writes first, for the whole copy.  Reply::

        {"session": int, "record": the source's RG record,
         "snapshots": [{"pid": str, "size": int, "lsn": int, "checksum": int}, ...]}
    """

    TYPE: ClassVar[str] = "copy_begin"
    TITLE: ClassVar[str] = "partition copy (begin)"
    ROLES: ClassVar[frozenset[str]] = PEERS
    rg: str = attrs.field(validator=_str)
    target: str = attrs.field(validator=_str)
    full_lease: bool = attrs.field(default=False, validator=v.instance_of(bool))
    #: A move (DESIGN §8): only these partitions, to a member of the RG taking them in.
    pids: list[str] | None = attrs.field(
        default=None, validator=v.optional(v.deep_iterable(_str, v.instance_of(list))))
    #: Bandwidth limit of this copy in MB/s (None: the source's brick.move_rate_mb_s for
    #: a move, brick.copy_rate_mb_s for a recovery).
    rate_mb_s: int | None = attrs.field(default=None, validator=v.optional(
        v.and_(v.instance_of(int), v.ge(0), v.le(100_000))))


@attrs.frozen
class CopyChunk(Message):
    """One chunk of a snapshot.  Reply: ``{"data": bytes, "checksum": xxh64 of data}``."""

    TYPE: ClassVar[str] = "copy_chunk"
    TITLE: ClassVar[str] = "partition copy (chunk)"
    ROLES: ClassVar[frozenset[str]] = PEERS
    session: int = attrs.field(validator=_session)
    pid: str = attrs.field(validator=_str)
    offset: int = attrs.field(validator=_u64)
    size: int = attrs.field(validator=v.and_(v.instance_of(int), v.ge(1), v.le(8 << 20)))


@attrs.frozen
class CopyFence(Message):
    """Take the write lease: the source fences new writes to the RG's partitions (they
    fail ``Recovering``), waits for prepared ones to resolve, and makes its log durable.
    Reply: ``{"lsn": {pid: last log position}}``.  The fence lapses after
    ``timeouts.copy_fence_ms`` unless the target is readmitted first."""

    TYPE: ClassVar[str] = "copy_fence"
    TITLE: ClassVar[str] = "partition copy (write fence)"
    session: int = attrs.field(validator=_session)


@attrs.frozen
class CopyDelta(Message):
    """Rows (tombstones included) of ``pid`` written after ``after_lsn``, in log order, at
    most ``limit``.  Reply: ``{"rows": [[key, value, version, lsn], ...], "more": bool}``."""

    TYPE: ClassVar[str] = "copy_delta"
    TITLE: ClassVar[str] = "partition copy (delta)"
    ROLES: ClassVar[frozenset[str]] = PEERS
    session: int = attrs.field(validator=_session)
    pid: str = attrs.field(validator=_str)
    after_lsn: int = attrs.field(validator=_u64)
    limit: int = attrs.field(default=10000, validator=v.and_(v.instance_of(int), v.ge(1),
                                                             v.le(1_000_000)))


@attrs.frozen
class Readmit(Message):
    """The target has applied the delta under the fence: the source changes the RG record
    to make it active (DESIGN §5), then lifts the fence.  Reply: ``{"record": new}``."""

    TYPE: ClassVar[str] = "readmit"
    TITLE: ClassVar[str] = "readmission"
    ROLES: ClassVar[frozenset[str]] = PEERS
    session: int = attrs.field(validator=_session)
    checksums: dict[str, int] = attrs.field(factory=dict, validator=v.instance_of(dict))


@attrs.frozen
class CopyCancel(Message):
    """Give up a copy session: lift its fence and delete its snapshots.  Reply: ``{}``."""

    TYPE: ClassVar[str] = "copy_cancel"
    TITLE: ClassVar[str] = "partition copy (cancel)"
    session: int = attrs.field(validator=_session)
    reason: str = attrs.field(default="", validator=_str)


@attrs.frozen
class Recover(Message):
    """``dds-admin recover``: start (or restart) recovery of this brick's replicas, for
    ``rg`` or every RG it is a non-active member of.  Reply: ``{"started": [rg, ...]}``."""

    TYPE: ClassVar[str] = "recover"
    TITLE: ClassVar[str] = "recover request"
    rg: str | None = attrs.field(default=None, validator=v.optional(_str))
    full_lease: bool | None = attrs.field(default=None,
                                          validator=v.optional(v.instance_of(bool)))


@attrs.frozen
class RGStatus(Message):
    """What this brick knows of RG ``rg``: asked by a restarted brick before it serves.
    Reply: ``{"record": record | None, "serving": bool, "state": str}`` where ``serving``
    means an active member with a valid lease that is not itself re-syncing."""

    TYPE: ClassVar[str] = "rg_status"
    TITLE: ClassVar[str] = "replica group query"
    rg: str = attrs.field(validator=_str)


__all__ = ["CopyBegin", "CopyCancel", "CopyChunk", "CopyDelta", "CopyFence", "RGStatus",
           "Readmit", "Recover"]
