"""Requests of ``dds-admin backup`` and ``dds-admin restore`` (issue 17), answered by
``dds.bricks.backup``.  Operator-only (``ADMIN_ONLY``): a backup reads every row of a
partition, a restore replaces a replica; no peer traffic needs either.

Backup: ``backup_begin`` (a snapshot of one partition, at one log position),
``backup_chunk`` (its bytes), ``backup_end`` (delete it).  Restore: ``restore_begin``
(an upload of one partition file into the brick's data dir), ``restore_chunk``,
``restore_finish`` (verify, then install in place of an *empty* replica),
``restore_abort``.  A session that hears nothing for a while is dropped with its file.
"""

from __future__ import annotations

from typing import ClassVar

import attrs
from attrs import validators as v

from dds.messages import ADMIN_ONLY, Message

__all__ = ["BackupBegin", "BackupChunk", "BackupEnd", "RestoreBegin", "RestoreChunk",
           "RestoreFinish", "RestoreAbort", "MAX_CHUNK"]

#: The largest chunk either way (a frame holds 16 MiB).
MAX_CHUNK = 8 << 20

_str = v.instance_of(str)
_u64 = v.and_(v.instance_of(int), v.ge(0), v.lt(1 << 64))
_session = v.and_(v.instance_of(int), v.ge(0), v.lt(1 << 63))
_chunk_size = v.and_(v.instance_of(int), v.ge(1), v.le(MAX_CHUNK))


@attrs.frozen
class BackupBegin(Message):
    """Snapshot this brick's replica of ``pid`` (an active member's, of an active
    partition) after the transactions prepared on it have resolved.  Reply::

        {"session": int, "pid": str, "size": int, "lsn": int, "checksum": xxh64,
         "brick": str}
    """

    TYPE: ClassVar[str] = "backup_begin"
    TITLE: ClassVar[str] = "backup (snapshot)"
    ROLES: ClassVar[frozenset[str]] = ADMIN_ONLY
    pid: str = attrs.field(validator=_str)


@attrs.frozen
class BackupChunk(Message):
    """``size`` bytes of a backup snapshot from ``offset``.
    Reply: ``{"data": bytes, "checksum": xxh64 of data}``."""

    TYPE: ClassVar[str] = "backup_chunk"
    TITLE: ClassVar[str] = "backup (chunk)"
    ROLES: ClassVar[frozenset[str]] = ADMIN_ONLY
    session: int = attrs.field(validator=_session)
    offset: int = attrs.field(validator=_u64)
    size: int = attrs.field(validator=_chunk_size)


@attrs.frozen
class BackupEnd(Message):
    """Delete a backup snapshot (done or given up).  Reply: ``{}``."""

    TYPE: ClassVar[str] = "backup_end"
    TITLE: ClassVar[str] = "backup (end)"
    ROLES: ClassVar[frozenset[str]] = ADMIN_ONLY
    session: int = attrs.field(validator=_session)


@attrs.frozen
class RestoreBegin(Message):
    """Receive a partition file of ``size`` bytes and xxh64 ``checksum`` for this
    brick's replica of ``pid``, which must be empty.  Reply: ``{"session": int}``."""

    TYPE: ClassVar[str] = "restore_begin"
    TITLE: ClassVar[str] = "restore (begin)"
    ROLES: ClassVar[frozenset[str]] = ADMIN_ONLY
    pid: str = attrs.field(validator=_str)
    size: int = attrs.field(validator=_u64)
    checksum: int = attrs.field(validator=_u64)


@attrs.frozen
class RestoreChunk(Message):
    """Bytes of the file at ``offset``, with their xxh64.  Reply: ``{}``."""

    TYPE: ClassVar[str] = "restore_chunk"
    TITLE: ClassVar[str] = "restore (chunk)"
    ROLES: ClassVar[frozenset[str]] = ADMIN_ONLY
    session: int = attrs.field(validator=_session)
    offset: int = attrs.field(validator=_u64)
    data: bytes = attrs.field(validator=v.and_(
        v.instance_of(bytes), v.max_len(MAX_CHUNK)))
    checksum: int = attrs.field(validator=_u64)


@attrs.frozen
class RestoreFinish(Message):
    """Verify the whole file and every row, then install it as the replica (still
    empty).  Reply: ``{"pid": str, "rows": int, "checksum": replica checksum,
    "count": live keys, "last_lsn": int}``."""

    TYPE: ClassVar[str] = "restore_finish"
    TITLE: ClassVar[str] = "restore (install)"
    ROLES: ClassVar[frozenset[str]] = ADMIN_ONLY
    session: int = attrs.field(validator=_session)


@attrs.frozen
class RestoreAbort(Message):
    """Give up an upload: its file is deleted.  Reply: ``{}``."""

    TYPE: ClassVar[str] = "restore_abort"
    TITLE: ClassVar[str] = "restore (abort)"
    ROLES: ClassVar[frozenset[str]] = ADMIN_ONLY
    session: int = attrs.field(validator=_session)
