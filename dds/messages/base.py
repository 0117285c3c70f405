"""What every request class shares (``dds.messages``): the ``Message`` base with its
registry by frame type, the roles that may send a request, the field validators, and
``decode_request`` / ``title`` / ``roles_of`` for the receiving end."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import attrs
from attrs import validators as v

from dds.errors import InvalidRequest

Op = Literal["put", "remove", "create", "cas", "replay"]
#: ``replay``: a client journal's write replayed at a promoted DR site (DESIGN §12),
#: written at ``expected_version`` (the version the primary gave it) if the site's copy
#: is older; ``value`` None replays a removal.
OPS = ("put", "remove", "create", "cas", "replay")
TxnId = tuple[int, int]

_u64 = v.and_(v.instance_of(int), v.ge(0), v.lt(1 << 64))
_u32 = v.and_(v.instance_of(int), v.ge(0), v.lt(1 << 32))
_str = v.instance_of(str)
_bytes = v.instance_of(bytes)
_opt_bytes = v.optional(_bytes)
#: A copy session's id or a split job's cut-over token.
_session = v.and_(v.instance_of(int), v.ge(0), v.lt(1 << 63))


def _pair(value: Any) -> tuple[int, int]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise TypeError("expected a pair of integers")
    a, b = value
    if not (isinstance(a, int) and isinstance(b, int)):
        raise TypeError("expected a pair of integers")
    return (a, b)


#: At most this many participants in one transaction (an RG's active members).
MAX_PARTICIPANTS = 16


def _participants(value: Any) -> tuple[str, ...]:
    """A transaction's participants: distinct brick ids, at most ``MAX_PARTICIPANTS``."""
    if not isinstance(value, (list, tuple)):
        raise TypeError("participants must be a list of brick ids")
    if len(value) > MAX_PARTICIPANTS:
        raise ValueError(f"participants: {len(value)} ids, at most {MAX_PARTICIPANTS}")
    if not all(type(b) is str and 0 < len(b) <= 128 for b in value):
        raise TypeError("participants must be brick ids (strings of 1-128 characters)")
    if len(set(value)) != len(value):
        raise ValueError("participants: a brick is listed twice")
    return tuple(value)


_REGISTRY: dict[str, type["Message"]] = {}
#: The compact read's frame type, for the hottest request (``GET_COMPACT_FIELDS``).
GET_COMPACT = "g"

#: Who may send a request (DESIGN §10), declared on each class for both ends, as its
#: fields are.  ``client``: the library (reads, the 2PC of its own writes, the map, asking
#: for an exclusion); ``admin``: ``dds-admin``; ``brick``: peer traffic.
ANY_ROLE: frozenset[str] = frozenset({"client", "admin", "brick"})
STAFF: frozenset[str] = frozenset({"admin", "brick"})
PEERS: frozenset[str] = frozenset({"brick"})
#: Operator-only repairs no peer traffic needs.
ADMIN_ONLY: frozenset[str] = frozenset({"admin"})


class Message:
    """Base: ``TYPE`` names the frame type; ``TITLE`` the operation, for people (errors
    a user reads say "get to b2 timed out", never the wire's ``g``); ``to_wire`` gives
    the body dict; ``ROLES`` the roles that may send it (admin and brick unless a class
    says otherwise)."""

    TYPE: ClassVar[str] = ""
    TITLE: ClassVar[str] = ""
    ROLES: ClassVar[frozenset[str]] = STAFF

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.TYPE:
            if not cls.__dict__.get("TITLE"):
                raise TypeError(f"message {cls.__name__} ({cls.TYPE!r}) has no TITLE")
            _REGISTRY[cls.TYPE] = cls

    def to_wire(self) -> dict[str, Any]:
        """The body, the inverse of ``decode_request``: ``decode_request(m.TYPE,
        m.to_wire()) == m``.  Fields in declaration order, less those equal to their
        default: a field a later version adds reaches an older peer (which would refuse
        a field it does not know) only when it is set, as hand-built bodies did."""
        body: dict[str, Any] = {}
        for name, default in _wire_fields(type(self)):
            value = getattr(self, name)
            if default is _REQUIRED or value != default or type(value) is not type(default):
                body[name] = value
        return body


#: A field without a default (``_wire_fields``): always sent.
_REQUIRED: Any = object()
_FIELDS: dict[type, tuple[tuple[str, Any], ...]] = {}


def _wire_fields(cls: type) -> tuple[tuple[str, Any], ...]:
    """``cls``'s fields and their defaults (``_REQUIRED`` for none), worked out once."""
    fields = _FIELDS.get(cls)
    if fields is None:
        out = []
        for f in attrs.fields(cls):
            default = f.default
            if default is attrs.NOTHING:
                default = _REQUIRED
            elif isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                default = default.factory()  # no factory here takes self
            out.append((f.name, default))
        fields = _FIELDS[cls] = tuple(out)
    return fields


def encode_request(msg: Message) -> tuple[str, dict[str, Any]]:
    """``msg`` as a frame's type and body: what ``RPCProtocol.send`` puts on the wire
    and ``decode_request`` reads back, one definition for both ends."""
    return msg.TYPE, msg.to_wire()


def title(mtype: str) -> str:
    """The operation a frame type stands for, in words: what user-facing errors say.
    An unknown type (a peer's, or a reply frame) is quoted, so it never passes for one."""
    if mtype == GET_COMPACT:
        return "get"
    cls = _REGISTRY.get(mtype)
    return cls.TITLE if cls is not None else f"{mtype!r:.40} request"


def roles_of(mtype: str) -> frozenset[str]:
    """The roles that may send ``mtype``; every role for an unknown type, whose decoding
    then names the problem."""
    cls = _REGISTRY.get(mtype)
    return ANY_ROLE if cls is None else cls.ROLES


def decode_request(mtype: str, body: Any) -> Message:
    cls = _REGISTRY.get(mtype)
    if cls is None:
        raise InvalidRequest(f"unknown message type {mtype!r:.40}")
    if not isinstance(body, dict):
        raise InvalidRequest(f"{mtype}: body must be a map")
    try:
        return cls(**body)
    except (TypeError, ValueError) as e:
        # attrs validators put the readable message first, then the attribute details.
        detail = e.args[0] if e.args else e.__class__.__name__
        raise InvalidRequest(f"{mtype}: {detail}") from None


@attrs.frozen
class RGRef:
    """The RG record a caller routed by: checked by the brick on every data operation."""

    rg: str
    version: int
    fp: int


__all__ = ["ADMIN_ONLY", "ANY_ROLE", "GET_COMPACT", "MAX_PARTICIPANTS", "Message", "OPS", "Op",
           "PEERS", "RGRef", "STAFF", "TxnId", "decode_request", "encode_request", "roles_of",
           "title"]
