"""Types of the replies read across modules, checked where they arrive.

A request is typed at both ends (``dds.messages``); most replies are small dicts read
next to where they are asked for.  The ones here cross a module (a brick's ``status``
read by several admin commands, ``copy_begin``'s snapshots walked by the whole pull,
``rg_status`` read by recovery and the admin tool), so a reply from a confused or
different-version peer must fail where it arrives, with an error that names the request
and the field (``ProtocolError``, a ``DDSError`` like any failed call), not as a
``KeyError`` deep in the code that reads it.

``Reply.from_wire(body)`` takes the fields it declares and ignores any others: a newer
peer may add fields to a reply.  A field with a default may be missing (an older peer).
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import attrs
from attrs import validators as v

from dds.errors import ProtocolError
from dds.messages import (CopyBegin, CopyChunk, CopyDelta, CopyFence, Message,
                          RangeChecksums, RGStatus, Status)

R = TypeVar("R", bound="Reply")

_int = v.instance_of(int)
_str = v.instance_of(str)
_dict = v.instance_of(dict)
_list = v.instance_of(list)
_str_list = v.deep_iterable(_str, _list)


class Reply:
    """Base: ``REQUEST`` is the message this answers (its title goes into errors)."""

    REQUEST: ClassVar[type[Message]]

    @classmethod
    def from_wire(cls: type[R], body: Any) -> R:
        """The reply ``body`` as this type; ``ProtocolError`` naming the problem if it
        does not have the shape."""
        what = f"malformed {cls.REQUEST.TITLE} reply"
        if not isinstance(body, dict):
            raise ProtocolError(f"{what}: not a map ({type(body).__name__})")
        kwargs = {}
        for f in attrs.fields(cls):  # type: ignore[arg-type]
            if f.name in body:
                kwargs[f.name] = body[f.name]
            elif f.default is attrs.NOTHING:
                raise ProtocolError(f"{what}: no {f.name!r}")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            detail = e.args[0] if e.args else e.__class__.__name__
            raise ProtocolError(f"{what}: {detail}") from None


def _body(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@attrs.frozen
class StatusReply(Reply):
    """A brick's ``status``: the fields the admin commands read, and the whole ``body``
    (``dds-admin status`` shows it all)."""

    REQUEST: ClassVar[type[Message]] = Status
    id: str = attrs.field(validator=_str)
    map_fp: int = attrs.field(validator=_int)
    map_version: int = attrs.field(default=0, validator=_int)
    pid: int | None = attrs.field(default=None, validator=v.optional(_int))
    partitions: list[str] = attrs.field(factory=list, validator=_str_list)
    #: This brick's state in each RG that lists it.
    members: dict[str, str] = attrs.field(factory=dict, validator=_dict)
    #: RGs whose recovery is blocked (they do not serve).
    blocked: list[str] = attrs.field(factory=list, validator=_str_list)
    #: Per RG: the recovery's progress (``bytes_done``, ``bytes_total``, ``state`` ...).
    recovery: dict[str, Any] = attrs.field(factory=dict, validator=_dict)
    #: Per incoming partition: the move's progress.
    moves_in: dict[str, Any] = attrs.field(factory=dict, validator=_dict)

    #: The whole reply, as the brick sent it.
    body: dict[str, Any] = attrs.field(factory=dict, converter=_body, eq=False,
                                       repr=False)

    @classmethod
    def from_wire(cls, body: Any) -> StatusReply:
        reply = super().from_wire(body)
        return attrs.evolve(reply, body=dict(body))

    def member_state(self, rg: str) -> str | None:
        state = self.members.get(rg)
        return state if isinstance(state, str) else None

    def serves(self, rg: str) -> bool:
        """Whether this brick is an active member of ``rg`` whose recovery is not
        blocked."""
        return self.member_state(rg) == "active" and rg not in self.blocked


def _snapshot(value: Any) -> dict[str, Any]:
    if not (isinstance(value, dict) and isinstance(value.get("pid"), str)
            and all(isinstance(value.get(k), int) for k in ("size", "lsn", "checksum"))):
        raise ValueError("snapshots: each must be {pid: str, size, lsn, checksum: int}, "
                         f"not {value!r:.80}")
    return value


def _snapshots(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise TypeError("snapshots must be a list")
    return [_snapshot(s) for s in value]


def _stream(value: Any) -> dict[str, Any] | None:
    """The snapshot stream offer, or None where it is absent or unusable (the copy then
    asks for chunks, as it did before streams)."""
    if (isinstance(value, dict) and isinstance(value.get("port"), int)
            and isinstance(value.get("token"), bytes)):
        return value
    return None


@attrs.frozen
class CopyBeginReply(Reply):
    """``copy_begin``'s: the session, the source's RG record, one snapshot per
    partition, and where the snapshots can be taken as streams (optional)."""

    REQUEST: ClassVar[type[Message]] = CopyBegin
    session: int = attrs.field(validator=_int)
    record: list[Any] = attrs.field(validator=_list)
    snapshots: list[dict[str, Any]] = attrs.field(converter=_snapshots)
    stream: dict[str, Any] | None = attrs.field(default=None, converter=_stream)

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"session": self.session, "record": self.record,
                                "snapshots": self.snapshots}
        if self.stream is not None:
            body["stream"] = self.stream
        return body


@attrs.frozen
class RGStatusReply(Reply):
    """``rg_status``'s: the brick's record of the RG (None: not in its map), whether it
    serves it, its state there.  ``reconciled`` (optional): it saw no write it does not
    hold since this brick's replicas were last known good."""

    REQUEST: ClassVar[type[Message]] = RGStatus
    record: list[Any] | None = attrs.field(validator=v.optional(_list))
    serving: bool = attrs.field(default=False, validator=v.instance_of(bool))
    state: str | None = attrs.field(default=None, validator=v.optional(_str))
    reconciled: bool = attrs.field(default=False, validator=v.instance_of(bool))


@attrs.frozen
class CopyChunkReply(Reply):
    REQUEST: ClassVar[type[Message]] = CopyChunk
    data: bytes = attrs.field(validator=v.instance_of(bytes))
    checksum: int = attrs.field(validator=_int)


def _rows(value: Any) -> list[list[Any]]:
    if not isinstance(value, list) or not all(
            isinstance(r, list) and len(r) >= 4 and isinstance(r[3], int) for r in value):
        raise ValueError("rows must be [[key, value, version, lsn, ...], ...]")
    return value


@attrs.frozen
class CopyDeltaReply(Reply):
    REQUEST: ClassVar[type[Message]] = CopyDelta
    rows: list[list[Any]] = attrs.field(converter=_rows)
    more: bool = attrs.field(default=False, validator=v.instance_of(bool))


@attrs.frozen
class CopyFenceReply(Reply):
    """``copy_fence``'s: the last log position of each partition under the fence."""

    REQUEST: ClassVar[type[Message]] = CopyFence
    lsn: dict[str, int] = attrs.field(validator=v.deep_mapping(_str, _int, _dict))


def _bucket(value: Any) -> list[int]:
    if not (isinstance(value, list) and len(value) == 2
            and all(isinstance(x, int) for x in value)):
        raise ValueError(f"buckets must be [[count, checksum], ...], not {value!r:.60}")
    return value


def _buckets(value: Any) -> list[list[int]]:
    if not isinstance(value, list):
        raise TypeError("buckets must be a list")
    return [_bucket(b) for b in value]


@attrs.frozen
class RangeChecksumsReply(Reply):
    """``range_checksums``'s: ``[count, checksum]`` per bucket, at log position ``lsn``."""

    REQUEST: ClassVar[type[Message]] = RangeChecksums
    buckets: list[list[int]] = attrs.field(converter=_buckets)
    lsn: int = attrs.field(validator=_int)


__all__ = ["Reply", "StatusReply", "CopyBeginReply", "RGStatusReply", "CopyChunkReply",
           "CopyDeltaReply", "CopyFenceReply", "RangeChecksumsReply"]
