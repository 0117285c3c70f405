"""The cluster map (gossip, pushes; DESIGN §2), membership leases (§6) and the
majority 2PC of RG record changes (§5)."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
from attrs import validators as v

from dds.messages.base import (ANY_ROLE, Message, PEERS, _pair, _str, _u32, _u64)


# -- maps ----------------------------------------------------------------------------------

@attrs.frozen
class MapGet(Message):
    """Reply: ``{"map": [record, ...]}`` (canonical record encodings)."""

    TYPE: ClassVar[str] = "map_get"
    TITLE: ClassVar[str] = "map request"
    ROLES: ClassVar[frozenset[str]] = ANY_ROLE


@attrs.frozen
class MapPush(Message):
    """Offer records; the brick adopts newer ones.
    Reply: ``{"adopted": int, "conflicts": [record id, ...]}``."""

    TYPE: ClassVar[str] = "map_push"
    TITLE: ClassVar[str] = "map push"
    ROLES: ClassVar[frozenset[str]] = ANY_ROLE
    records: list[Any] = attrs.field(validator=v.instance_of(list))


@attrs.frozen
class Gossip(Message):
    """Digest exchange.  Reply: ``{"records": [newer records], "want": [record ids]}``."""

    TYPE: ClassVar[str] = "gossip"
    TITLE: ClassVar[str] = "map gossip"
    ROLES: ClassVar[frozenset[str]] = PEERS
    digest: list[Any] = attrs.field(validator=v.instance_of(list))


# -- membership leases (DESIGN §6) --------------------------------------------------------

@attrs.frozen
class Lease(Message):
    """One batched renewal: ``holder`` asks this brick to grant it a membership lease for
    each RG in ``rgs``.  Reply: ``{"granted": [rg, ...], "refused": {rg: reason}}``.  A
    grant promises not to vote for the holder's exclusion from that RG for one lease
    period, counted from when the grantor received the request."""

    TYPE: ClassVar[str] = "lease"
    TITLE: ClassVar[str] = "lease request"
    ROLES: ClassVar[frozenset[str]] = PEERS
    holder: str = attrs.field(validator=_str)
    rgs: list[str] = attrs.field(validator=v.deep_iterable(_str, v.instance_of(list)))


# -- RG record changes (DESIGN §5) --------------------------------------------------------

_MEMBER_STATE = v.in_(("active", "recovering", "excluded"))


@attrs.frozen
class RGChange(Message):
    """Ask this brick to change ``member``'s state in RG ``rg`` from the record at
    ``version``/``fp``, coordinating the majority 2PC of DESIGN §5.  Sent by a library
    that cannot reach a member (``state="excluded"``) and by a brick about itself (it
    starts recovery: ``"recovering"``).  Reply: ``{"record": the new record}``, or
    ``Refused`` naming why (the suspect answers, another change holds the lock, too few
    votes), or ``StaleMap`` with this brick's newer record."""

    TYPE: ClassVar[str] = "rg_change"
    TITLE: ClassVar[str] = "member state change"
    ROLES: ClassVar[frozenset[str]] = ANY_ROLE
    rg: str = attrs.field(validator=_str)
    version: int = attrs.field(validator=_u64)
    fp: int = attrs.field(validator=_u32)
    member: str = attrs.field(validator=_str)
    state: str = attrs.field(validator=_MEMBER_STATE)
    reason: str = attrs.field(default="", validator=_str)


@attrs.frozen
class RecordPrepare(Message):
    """Phase one of a record change, from its coordinator (a member) to each active
    member.  The voter takes the record's lock, checks it holds the record at
    ``old_version``/``old_fp``, checks an exclusion's suspect itself and waits out its
    own grant to it.  Reply: ``{}`` (YES) or ``Refused``/``StaleMap`` (NO)."""

    TYPE: ClassVar[str] = "record_prepare"
    TITLE: ClassVar[str] = "record change (prepare)"
    ROLES: ClassVar[frozenset[str]] = PEERS
    change: tuple[int, int] = attrs.field(converter=_pair)
    coordinator: str = attrs.field(validator=_str)
    old_version: int = attrs.field(validator=_u64)
    old_fp: int = attrs.field(validator=_u32)
    record: list[Any] = attrs.field(validator=v.instance_of(list))
    member: str = attrs.field(validator=_str)
    #: The member's new state, or the kind of change: added, removed, partitions.
    state: str = attrs.field(validator=v.in_(("active", "recovering", "excluded", "added",
                                              "removed", "partitions")))
    reason: str = attrs.field(default="", validator=_str)


@attrs.frozen
class RecordDecide(Message):
    """Phase two of a record change: ``commit`` (adopt ``record``) or abort (release the
    lock).  Reply: ``{}``."""

    TYPE: ClassVar[str] = "record_decide"
    TITLE: ClassVar[str] = "record change (decision)"
    ROLES: ClassVar[frozenset[str]] = PEERS
    change: tuple[int, int] = attrs.field(converter=_pair)
    commit: bool = attrs.field(validator=v.instance_of(bool))
    record: list[Any] | None = attrs.field(default=None,
                                           validator=v.optional(v.instance_of(list)))


@attrs.frozen
class RecordState(Message):
    """A voter still holding a record lock asks the change's coordinator what happened.
    Reply: ``{"state": "pending" | "committed" | "aborted", "record": record | None}``.
    A coordinator that does not know the change (it restarted) and has not adopted a
    newer record answers ``aborted`` and can no longer commit it."""

    TYPE: ClassVar[str] = "record_state"
    TITLE: ClassVar[str] = "record change query"
    ROLES: ClassVar[frozenset[str]] = PEERS
    change: tuple[int, int] = attrs.field(converter=_pair)
    rg: str = attrs.field(validator=_str)


__all__ = ["Gossip", "Lease", "MapGet", "MapPush", "RGChange", "RecordDecide", "RecordPrepare",
           "RecordState"]
