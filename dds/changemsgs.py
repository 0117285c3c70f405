"""The change stream's request (DESIGN §12, issue 17), declared once for both ends like
the messages of ``dds.messages``."""

from __future__ import annotations

from typing import ClassVar

import attrs
from attrs import validators as v

from dds.changepos import MAX_TEXT
from dds.messages import Message

#: Most changes one page may hold.
MAX_PAGE = 1000
#: Who may read a stream (DESIGN §10): the library and ``dds-admin``.
READERS: frozenset[str] = frozenset({"client", "admin"})


@attrs.frozen
class ReadChanges(Message):
    """A page of committed changes of partition ``pid`` after ``position`` (a token,
    ``beginning`` or ``now``: ``dds.changepos``), at most ``limit``, in log order.  Reply::

        {"changes": [[key, value | None, version, position], ...],
         "position": the position after the page, "more": bool,
         "translated": "exact" | "time" | "beginning" | "now",
         "ended": bool, "successors": [pid, ...]}

    ``ended``: the partition no longer exists (it split or merged into ``successors``);
    a partition moved to another RG is ``StaleMap`` like any data request."""

    TYPE: ClassVar[str] = "changes"
    TITLE: ClassVar[str] = "change stream read"
    ROLES: ClassVar[frozenset[str]] = READERS
    pid: str = attrs.field(validator=v.instance_of(str))
    rg: str = attrs.field(validator=v.instance_of(str))
    rg_version: int = attrs.field(validator=v.and_(v.instance_of(int), v.ge(0),
                                                   v.lt(1 << 64)))
    rg_fp: int = attrs.field(validator=v.and_(v.instance_of(int), v.ge(0), v.lt(1 << 32)))
    position: str = attrs.field(validator=v.and_(v.instance_of(str),
                                                 v.max_len(MAX_TEXT)))
    limit: int = attrs.field(default=MAX_PAGE, validator=v.and_(
        v.instance_of(int), v.ge(1), v.le(MAX_PAGE)))


__all__ = ["MAX_PAGE", "READERS", "ReadChanges"]
