"""The disaster-recovery site's requests (DESIGN §12, issue 17), declared once for both
ends like the messages of ``dds.messages``.

Three parties speak them:

- the **follower** (``dds-admin dr attach``/``follow``, role ``admin`` of both sites)
  reads the primary's change stream with ``DrRead``, which also tells the serving brick
  what the DR site has applied (the **tag**), and writes the pages into the DR site with
  ``DrApply``;
- the **library** asks a primary brick for the tags of partitions whose journal entries
  wait (``DrTags``) when no write reply brought a newer one;
- ``dds-admin dr status`` reads the tags and marks of both sites (``DrTags``,
  ``DrMarks``).

A tag is ``[maker, safe_ms]``: the DR site holds every write committed at brick ``maker``
before ``safe_ms`` on that brick's clock (``dds.changepos``, the safe time).  A write's
vote reply on an attached primary carries ``"at"`` (when the member recorded its YES,
ms on its clock) and, where the member knows one, ``"dr"`` (the partition's tag).  The
write is at the DR site once a tag ``[m, s]`` has ``s > at[m]``, or, for a maker that
did not vote, ``s > max(at) + skew``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
from attrs import validators as v

from dds.changemsgs import ReadChanges
from dds.changepos import MAX_TEXT
from dds.messages import Message
from dds.messages.base import ADMIN_ONLY

#: Most rows one ``DrApply`` carries (a change page's worth).
MAX_APPLY_ROWS = 1000
#: Most partitions one ``DrTags`` / ``DrMarks`` request names.
MAX_PIDS = 4096
#: Who may ask a primary for tags: the library and ``dds-admin``.
TAG_READERS: frozenset[str] = frozenset({"client", "admin"})

_u64 = v.and_(v.instance_of(int), v.ge(0), v.lt(1 << 64))
_u32 = v.and_(v.instance_of(int), v.ge(0), v.lt(1 << 32))
_text = v.and_(v.instance_of(str), v.max_len(MAX_TEXT))


def _pids(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > MAX_PIDS:
        raise TypeError(f"pids must be a list of at most {MAX_PIDS} partition ids")
    if not all(type(p) is str and 0 < len(p) <= 64 for p in value):
        raise TypeError("pids must be partition ids (text)")
    return tuple(value)


def _rows(value: Any) -> tuple[tuple[bytes, bytes | None, int], ...]:
    """``[[key, value | None, version], ...]``: the rows of a change page."""
    if not isinstance(value, (list, tuple)) or len(value) > MAX_APPLY_ROWS:
        raise TypeError(f"rows must be a list of at most {MAX_APPLY_ROWS} rows")
    out = []
    for row in value:
        if not isinstance(row, (list, tuple)) or len(row) != 3:
            raise TypeError("a row must be [key, value | None, version]")
        key, val, version = row
        if type(key) is not bytes or not (val is None or type(val) is bytes) \
                or type(version) is not int or not 1 <= version < (1 << 63):
            raise TypeError("a row must be [bytes, bytes | None, version >= 1]")
        out.append((key, val, version))
    return tuple(out)


@attrs.frozen
class DrRead(ReadChanges):
    """``ReadChanges`` by the DR follower, which also reports what the DR site has
    durably applied of this partition: ``applied``, a position of this partition's stream
    made by brick ``applied_by`` (empty: nothing yet).  The brick keeps it as the
    partition's tag.  Reply: as ``ReadChanges``."""

    TYPE: ClassVar[str] = "dr_read"
    TITLE: ClassVar[str] = "DR follower read"
    ROLES: ClassVar[frozenset[str]] = ADMIN_ONLY
    applied: str = attrs.field(default="", validator=_text)
    applied_by: str = attrs.field(default="", validator=v.and_(v.instance_of(str),
                                                               v.max_len(128)))


@attrs.frozen
class DrApply(Message):
    """Rows of the primary's change stream, for DR partition ``pid`` of ``rg`` (routed
    and checked like a data operation).  Each row is written at its version if the
    replica's copy of the key is older (idempotent: a page sent twice changes nothing),
    all rows in one durable storage transaction, with ``marks`` (primary partition →
    ``[position, safe_ms]``: how far the follower has applied that primary partition into
    this one).  Refused (``NotPrimary``'s opposite: ``Refused``) unless this site is a
    follower.  Reply: ``{"applied": rows written, "skipped": rows already newer}``."""

    TYPE: ClassVar[str] = "dr_apply"
    TITLE: ClassVar[str] = "DR apply"
    ROLES: ClassVar[frozenset[str]] = ADMIN_ONLY
    pid: str = attrs.field(validator=v.instance_of(str))
    rg: str = attrs.field(validator=v.instance_of(str))
    rg_version: int = attrs.field(validator=_u64)
    rg_fp: int = attrs.field(validator=_u32)
    rows: tuple[tuple[bytes, bytes | None, int], ...] = attrs.field(converter=_rows)
    marks: dict[str, Any] = attrs.field(factory=dict, validator=v.instance_of(dict))


@attrs.frozen
class DrTags(Message):
    """The tags this primary brick holds for ``pids`` (all it holds when empty).  Reply:
    ``{"tags": {pid: [maker, safe_ms, position]}, "now_ms": this brick's clock}``."""

    TYPE: ClassVar[str] = "dr_tags"
    TITLE: ClassVar[str] = "DR tags"
    ROLES: ClassVar[frozenset[str]] = TAG_READERS
    pids: tuple[str, ...] = attrs.field(default=(), converter=_pids)


@attrs.frozen
class DrMarks(Message):
    """The marks this DR brick holds (``DrApply``), per DR partition it serves.  Reply:
    ``{"marks": {dr_pid: {primary_pid: [position, safe_ms]}}, "now_ms": ...}``."""

    TYPE: ClassVar[str] = "dr_marks"
    TITLE: ClassVar[str] = "DR marks"
    ROLES: ClassVar[frozenset[str]] = ADMIN_ONLY


__all__ = ["DrApply", "DrMarks", "DrRead", "DrTags", "MAX_APPLY_ROWS", "MAX_PIDS",
           "TAG_READERS"]
