"""Data operations (DESIGN §3–4): reads, the bounded read, and the 2PC of a write."""

from __future__ import annotations

from typing import ClassVar

import attrs
from attrs import validators as v

from dds.messages.base import (ANY_ROLE, Message, OPS, TxnId, _bytes, _opt_bytes, _pair,
                               _participants, _str, _u32, _u64)


# -- data operations ---------------------------------------------------------------------

@attrs.frozen
class Get(Message):
    """Read one key.  Reply: ``{"value": bytes|None, "version": int}``."""

    TYPE: ClassVar[str] = "get"
    TITLE: ClassVar[str] = "get"
    ROLES: ClassVar[frozenset[str]] = ANY_ROLE
    pid: str = attrs.field(validator=_str)
    key: bytes = attrs.field(validator=_bytes)
    rg: str = attrs.field(validator=_str)
    rg_version: int = attrs.field(validator=_u64)
    rg_fp: int = attrs.field(validator=_u32)


@attrs.frozen
class BoundedGet(Message):
    """Read one key with bounded staleness (DESIGN §3): any active replica answers if
    it can prove its copy is at most ``max_stale_ms`` old; it does not wait on a prepared
    key, and it may answer while its lease has lapsed for less than the bound.  Reply:
    ``{"value": bytes|None, "version": int, "stale_ms": int}``: the value was current at
    most ``stale_ms`` before the brick read it.  ``NotServing`` when it cannot prove that
    within the bound."""

    TYPE: ClassVar[str] = "bget"
    TITLE: ClassVar[str] = "bounded get"
    ROLES: ClassVar[frozenset[str]] = ANY_ROLE
    pid: str = attrs.field(validator=_str)
    key: bytes = attrs.field(validator=_bytes)
    rg: str = attrs.field(validator=_str)
    rg_version: int = attrs.field(validator=_u64)
    rg_fp: int = attrs.field(validator=_u32)
    max_stale_ms: int = attrs.field(validator=_u64)


#: The compact read's body (``GET_COMPACT``, declared with ``title``): ``Get``'s fields by
#: position, ``[pid, rg, rg_version, rg_fp, key]``, reply ``[value, version]``: no field
#: names to encode and decode.  Sent only to a brick that announced the ``g`` feature in
#: its handshake (``dds.rpc.FEATURES``); checked exactly as ``get``.
GET_COMPACT_FIELDS = ("pid", "rg", "rg_version", "rg_fp", "key")


@attrs.frozen
class Prepare(Message):
    """Phase one of a write.  Reply (vote YES): ``{"version": current}``; a vote NO is an
    error reply (``Locked``, ``Exists``, ``VersionMismatch``, ``StaleMap``, ``NotServing``)."""

    TYPE: ClassVar[str] = "prepare"
    TITLE: ClassVar[str] = "write (prepare)"
    ROLES: ClassVar[frozenset[str]] = ANY_ROLE
    txid: TxnId = attrs.field(converter=_pair)
    ts: tuple[int, int] = attrs.field(converter=_pair)
    pid: str = attrs.field(validator=_str)
    key: bytes = attrs.field(validator=_bytes)
    op: str = attrs.field(validator=v.in_(OPS))
    value: bytes | None = attrs.field(validator=_opt_bytes)
    expected_version: int | None = attrs.field(validator=v.optional(_u64))
    rg: str = attrs.field(validator=_str)
    rg_version: int = attrs.field(validator=_u64)
    rg_fp: int = attrs.field(validator=_u32)
    timeout_ms: int = attrs.field(validator=v.and_(v.instance_of(int), v.ge(1),
                                                   v.le(600_000)))
    #: The members the PREPARE was sent to (DESIGN §4): the ones termination asks.
    #: Empty from a library older than the field: the record's active members then.
    participants: tuple[str, ...] = attrs.field(default=(), converter=_participants)

    def __attrs_post_init__(self) -> None:
        if self.op == "replay":
            if self.expected_version is None or self.expected_version < 1:
                raise ValueError("replay needs expected_version: the version to write")
            return
        if (self.value is None) != (self.op == "remove"):
            raise ValueError("value is required for put/create/cas and absent for remove")
        if (self.expected_version is None) != (self.op != "cas"):
            raise ValueError("expected_version is required for cas and only for cas")


@attrs.frozen
class Commit(Message):
    """Phase two, commit.  Reply: ``{"version": new}``."""

    TYPE: ClassVar[str] = "commit"
    TITLE: ClassVar[str] = "write (commit)"
    ROLES: ClassVar[frozenset[str]] = ANY_ROLE
    txid: TxnId = attrs.field(converter=_pair)


@attrs.frozen
class Abort(Message):
    """Phase two, abort.  Reply: ``{}``."""

    TYPE: ClassVar[str] = "abort"
    TITLE: ClassVar[str] = "write (abort)"
    ROLES: ClassVar[frozenset[str]] = ANY_ROLE
    txid: TxnId = attrs.field(converter=_pair)


__all__ = ["Abort", "BoundedGet", "Commit", "GET_COMPACT_FIELDS", "Get", "Prepare"]
