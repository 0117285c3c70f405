"""Reorganization (DESIGN §8): the journal, range checksums and keys, a repair's row read,
administrative record updates, moves, and split and merge in place."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
from attrs import validators as v

from dds.messages.base import (Message, PEERS, _bytes, _session, _str, _u32, _u64)


# -- reorganization (DESIGN §8) ------------------------------------------------------------

@attrs.frozen
class JournalWrite(Message):
    """Record a multi-step operation's progress durably before acting (DESIGN §8): create
    job ``job`` (with ``kind`` and ``plan``), add a completed ``step`` (``{"name": str,
    ...}``), or set its ``state`` (running | cancel-requested | done | failed | cancelled
    | rolled-back).  Reply: ``{"job": the job as stored}``."""

    TYPE: ClassVar[str] = "journal_write"
    TITLE: ClassVar[str] = "journal write"
    job: str = attrs.field(validator=_str)
    kind: str | None = attrs.field(default=None, validator=v.optional(_str))
    plan: dict[str, Any] | None = attrs.field(default=None,
                                              validator=v.optional(v.instance_of(dict)))
    step: dict[str, Any] | None = attrs.field(default=None,
                                              validator=v.optional(v.instance_of(dict)))
    state: str | None = attrs.field(default=None, validator=v.optional(_str))


@attrs.frozen
class JournalRead(Message):
    """Jobs in this brick's journal: one (``job``), or all (``unfinished`` only, by
    default).  Reply: ``{"jobs": [{"job", "kind", "plan", "steps": [...], "state",
    "created", "updated"}, ...]}``."""

    TYPE: ClassVar[str] = "journal_read"
    TITLE: ClassVar[str] = "journal read"
    job: str | None = attrs.field(default=None, validator=v.optional(_str))
    unfinished: bool = attrs.field(default=True, validator=v.instance_of(bool))


@attrs.frozen
class RangeChecksums(Message):
    """Scrub: the replica of ``pid`` cut into ``buckets`` key-hash ranges.  Reply:
    ``{"buckets": [[count, checksum], ...], "lsn": last committed lsn}``."""

    TYPE: ClassVar[str] = "range_checksums"
    TITLE: ClassVar[str] = "range checksums"
    pid: str = attrs.field(validator=_str)
    buckets: int = attrs.field(default=64, validator=v.and_(v.instance_of(int), v.ge(1),
                                                            v.le(65536)))


@attrs.frozen
class RangeKeys(Message):
    """Scrub: every key of bucket ``bucket`` (of ``buckets``) of ``pid`` with its version
    and a hash of its value.  Reply: ``{"keys": [[key, version, value_hash], ...]}``."""

    TYPE: ClassVar[str] = "range_keys"
    TITLE: ClassVar[str] = "range key listing"
    pid: str = attrs.field(validator=_str)
    bucket: int = attrs.field(validator=v.and_(v.instance_of(int), v.ge(0)))
    buckets: int = attrs.field(validator=v.and_(v.instance_of(int), v.ge(1), v.le(65536)))


@attrs.frozen
class RowRead(Message):
    """A member's current row of ``key`` in ``pid``, for a member of RG ``rg`` repairing
    its damaged copy (``bricks/selfrepair.py``).  Reply: ``{"value": bytes|None,
    "version": int, "checksum": int, "prepared": bool}``; with ``prepared`` true (a
    transaction on the key is in progress there) the row is left out."""

    TYPE: ClassVar[str] = "row_read"
    TITLE: ClassVar[str] = "row read for repair"
    ROLES: ClassVar[frozenset[str]] = PEERS
    pid: str = attrs.field(validator=_str)
    key: bytes = attrs.field(validator=_bytes)
    rg: str = attrs.field(validator=_str)


@attrs.frozen
class RGUpdate(Message):
    """Change the partitions of RG ``rg`` from the record at ``version``/``fp`` to
    ``partitions`` (``[[pid, state], ...]``), by the majority 2PC of DESIGN §5, or add a
    member (``add_member``, joining as recovering) or remove one (``remove_member``).
    Sent by dds-admin for reorganization steps.  Reply: ``{"record": new}``."""

    TYPE: ClassVar[str] = "rg_update"
    TITLE: ClassVar[str] = "replica group change"
    rg: str = attrs.field(validator=_str)
    version: int = attrs.field(validator=_u64)
    fp: int = attrs.field(validator=_u32)
    partitions: list[Any] | None = attrs.field(default=None,
                                               validator=v.optional(v.instance_of(list)))
    add_member: str | None = attrs.field(default=None, validator=v.optional(_str))
    remove_member: str | None = attrs.field(default=None, validator=v.optional(_str))
    reason: str = attrs.field(default="", validator=_str)


@attrs.frozen
class MovePull(Message):
    """Move, on each member of the RG taking ``pid`` in (where it is incoming): copy it
    from ``source``, a member of ``from_rg``, and catch up with its writes.  Reply:
    ``{"session": int, "bytes": int}``."""

    TYPE: ClassVar[str] = "move_pull"
    TITLE: ClassVar[str] = "move (copy)"
    pid: str = attrs.field(validator=_str)
    source: str = attrs.field(validator=_str)
    from_rg: str = attrs.field(validator=_str)
    rate_mb_s: int | None = attrs.field(default=None, validator=v.optional(
        v.and_(v.instance_of(int), v.ge(0), v.le(100_000))))


@attrs.frozen
class MoveFinish(Message):
    """Move, once the source fenced writes to ``pid``: apply the last delta.  Reply:
    ``{"rows": int}``."""

    TYPE: ClassVar[str] = "move_finish"
    TITLE: ClassVar[str] = "move (last delta)"
    pid: str = attrs.field(validator=_str)


# -- split and merge in place (DESIGN §8; dds.bricks.split, dds.tools.split) -------------

_pid_list = v.deep_iterable(member_validator=_str, iterable_validator=v.instance_of(list))


@attrs.frozen
class SplitPrepare(Message):
    """Split or merge in place, on each active member of the RG: build the replica files of
    ``targets`` (the two children of the one source, or the parent of the two sibling
    sources) locally from a snapshot of ``sources``, then catch up with their writes.
    A repeated request for the same ``job`` starts over.  Reply: ``{"rows": int,
    "lsn": {source: last applied lsn}}``."""

    TYPE: ClassVar[str] = "split_prepare"
    TITLE: ClassVar[str] = "split/merge (build)"
    job: str = attrs.field(validator=_str)
    sources: list[str] = attrs.field(validator=_pid_list)
    targets: list[str] = attrs.field(validator=_pid_list)


@attrs.frozen
class SplitFence(Message):
    """On one member (the job's leader): fence writes to the job's sources, drain the
    transactions in flight, flush.  Held until ``split_release``/``split_abort`` or it
    lapses.  Repeated while held: the same answer.  Reply: ``{"token": int}``."""

    TYPE: ClassVar[str] = "split_fence"
    TITLE: ClassVar[str] = "split/merge (write fence)"
    job: str = attrs.field(validator=_str)


@attrs.frozen
class SplitFinish(Message):
    """On each member, after ``split_fence``: fence locally, drain, apply the last rows of
    the sources and install the built targets as this brick's replicas (they must be
    listed incoming in its RG).  Reply: ``{"rows": int, "counts": {target: live keys}}``."""

    TYPE: ClassVar[str] = "split_finish"
    TITLE: ClassVar[str] = "split/merge (last delta)"
    job: str = attrs.field(validator=_str)


@attrs.frozen
class SplitCutover(Message):
    """On the leader: if its fence of ``job`` (``token``) has been held without a break,
    change RG ``rg`` from ``version``/``fp`` to ``partitions`` (the sources gone, the
    targets active) by the majority 2PC, with the fence held throughout.  Reply:
    ``{"record": new}``."""

    TYPE: ClassVar[str] = "split_cutover"
    TITLE: ClassVar[str] = "split/merge (cut-over)"
    job: str = attrs.field(validator=_str)
    token: int = attrs.field(validator=_session)
    rg: str = attrs.field(validator=_str)
    version: int = attrs.field(validator=_u64)
    fp: int = attrs.field(validator=_u32)
    partitions: list[Any] = attrs.field(validator=v.instance_of(list))
    reason: str = attrs.field(default="", validator=_str)


@attrs.frozen
class SplitRelease(Message):
    """The job is over (cut over): lift this brick's fences of it and forget it.
    Unknown jobs are fine.  Reply: ``{}``."""

    TYPE: ClassVar[str] = "split_release"
    TITLE: ClassVar[str] = "split/merge (release)"
    job: str = attrs.field(validator=_str)


@attrs.frozen
class SplitAbort(Message):
    """Roll the job back on this brick: no cut-over may start from it any more (one in
    flight is waited for), its fences are lifted and its staged files deleted; installed
    targets stay until the RG record stops listing them.  Reply: ``{"cutover_in_flight":
    bool}``."""

    TYPE: ClassVar[str] = "split_abort"
    TITLE: ClassVar[str] = "split/merge (rollback)"
    job: str = attrs.field(validator=_str)
    reason: str = attrs.field(default="", validator=_str)


@attrs.frozen
class SplitStatus(Message):
    """The split/merge jobs this brick works on (one ``job``, or all).  Reply:
    ``{"jobs": {job: {"state", "sources", "targets", "rows_done", "rows_total",
    "fenced", ...}}}``."""

    TYPE: ClassVar[str] = "split_status"
    TITLE: ClassVar[str] = "split/merge progress query"
    job: str | None = attrs.field(default=None, validator=v.optional(_str))


__all__ = ["JournalRead", "JournalWrite", "MoveFinish", "MovePull", "RGUpdate",
           "RangeChecksums", "RangeKeys", "RowRead", "SplitAbort", "SplitCutover",
           "SplitFence", "SplitFinish", "SplitPrepare", "SplitRelease", "SplitStatus"]
