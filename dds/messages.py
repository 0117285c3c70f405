"""Request bodies of the wire protocol, as small validated attrs classes (DESIGN §10).

Each request type has a class; ``decode_request(type, body)`` builds it from a decoded
frame and turns every shape or type problem into ``InvalidRequest`` naming the field, so
a handler only ever sees well-formed requests.  Replies are plain dicts documented on each
class: they are built on hot paths and read by code that owns both ends.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import attrs
from attrs import validators as v

from dds import failpoints
from dds.errors import InvalidRequest

Op = Literal["put", "remove", "create", "cas"]
OPS = ("put", "remove", "create", "cas")
TxnId = tuple[int, int]

_u64 = v.and_(v.instance_of(int), v.ge(0), v.lt(1 << 64))
_u32 = v.and_(v.instance_of(int), v.ge(0), v.lt(1 << 32))
_str = v.instance_of(str)
_bytes = v.instance_of(bytes)
_opt_bytes = v.optional(_bytes)


def _pair(value: Any) -> tuple[int, int]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise TypeError("expected a pair of integers")
    a, b = value
    if not (isinstance(a, int) and isinstance(b, int)):
        raise TypeError("expected a pair of integers")
    return (a, b)


_REGISTRY: dict[str, type["Message"]] = {}


class Message:
    """Base: ``TYPE`` names the frame type; ``to_wire`` gives the body dict."""

    TYPE: ClassVar[str] = ""

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.TYPE:
            _REGISTRY[cls.TYPE] = cls

    def to_wire(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=False)  # type: ignore[arg-type]


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


# -- data operations ---------------------------------------------------------------------

@attrs.frozen
class Get(Message):
    """Read one key.  Reply: ``{"value": bytes|None, "version": int}``."""

    TYPE: ClassVar[str] = "get"
    pid: str = attrs.field(validator=_str)
    key: bytes = attrs.field(validator=_bytes)
    rg: str = attrs.field(validator=_str)
    rg_version: int = attrs.field(validator=_u64)
    rg_fp: int = attrs.field(validator=_u32)


@attrs.frozen
class Prepare(Message):
    """Phase one of a write.  Reply (vote YES): ``{"version": current}``; a vote NO is an
    error reply (``Locked``, ``Exists``, ``VersionMismatch``, ``StaleMap``, ``NotServing``)."""

    TYPE: ClassVar[str] = "prepare"
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

    def __attrs_post_init__(self) -> None:
        if (self.value is None) != (self.op == "remove"):
            raise ValueError("value is required for put/create/cas and absent for remove")
        if (self.expected_version is None) != (self.op != "cas"):
            raise ValueError("expected_version is required for cas and only for cas")


@attrs.frozen
class Commit(Message):
    """Phase two, commit.  Reply: ``{"version": new}``."""

    TYPE: ClassVar[str] = "commit"
    txid: TxnId = attrs.field(converter=_pair)


@attrs.frozen
class Abort(Message):
    """Phase two, abort.  Reply: ``{}``."""

    TYPE: ClassVar[str] = "abort"
    txid: TxnId = attrs.field(converter=_pair)


# -- maps ----------------------------------------------------------------------------------

@attrs.frozen
class MapGet(Message):
    """Reply: ``{"map": [record, ...]}`` (canonical record encodings)."""

    TYPE: ClassVar[str] = "map_get"


@attrs.frozen
class MapPush(Message):
    """Offer records; the brick adopts newer ones.
    Reply: ``{"adopted": int, "conflicts": [record id, ...]}``."""

    TYPE: ClassVar[str] = "map_push"
    records: list[Any] = attrs.field(validator=v.instance_of(list))


@attrs.frozen
class Gossip(Message):
    """Digest exchange.  Reply: ``{"records": [newer records], "want": [record ids]}``."""

    TYPE: ClassVar[str] = "gossip"
    digest: list[Any] = attrs.field(validator=v.instance_of(list))


# -- administration ----------------------------------------------------------------------

@attrs.frozen
class Status(Message):
    """Reply: the brick's status dict (id, map digest and fingerprint, partitions,
    counters) for ``dds-admin status``."""

    TYPE: ClassVar[str] = "status"


@attrs.frozen
class Checksum(Message):
    """Reply: ``{"count": live keys, "checksum": int, "last_lsn": int}`` of one replica."""

    TYPE: ClassVar[str] = "checksum"
    pid: str = attrs.field(validator=_str)


@attrs.frozen
class Ping(Message):
    """Reply: ``{}``; used by liveness checks and the echo floor."""

    TYPE: ClassVar[str] = "ping"


@attrs.frozen
class TxnState(Message):
    """Termination query between members.  Reply:
    ``{"state": "prepared" | "committed" | "aborted"}``; a member that never prepared the
    transaction records it as aborted before answering.  ``pid``, ``key`` and
    ``new_version`` let a member that has forgotten the transaction (it restarted) answer
    from its data: the key at ``new_version`` or later means it was committed there."""

    TYPE: ClassVar[str] = "txn_state"
    txid: TxnId = attrs.field(converter=_pair)
    pid: str | None = attrs.field(default=None, validator=v.optional(_str))
    key: bytes | None = attrs.field(default=None, validator=_opt_bytes)
    new_version: int | None = attrs.field(default=None, validator=v.optional(_u64))


@attrs.frozen
class Failpoint(Message):
    """Arm (``action`` given) or disarm (``action`` None) one failpoint of the brick
    process (``dds/failpoints.py``, ``docs/failpoints.md``).  Reply:
    ``{"armed": {name: action, ...}}``, every failpoint armed afterwards."""

    TYPE: ClassVar[str] = "failpoint"
    name: str = attrs.field(validator=_str)
    action: str | None = attrs.field(default=None, validator=v.optional(_str))

    def __attrs_post_init__(self) -> None:
        try:
            failpoints.check_name(self.name)
            if self.action is not None:
                failpoints.parse_action(self.action)
        except failpoints.FailpointError as e:
            raise ValueError(e.message) from None


def _opt_pair(value: Any) -> tuple[int, int] | None:
    return None if value is None else _pair(value)


@attrs.frozen
class Txns(Message):
    """Every active transaction of the brick, for ``dds-admin txns``.  Reply::

        {"brick": id, "txns": [{"txid": [lib, counter], "pid": str, "key": bytes,
          "op": str, "state": "preparing" | "prepared" | "committing",
          "age_s": float, "deadline_s": float | None, "due_in_s": float | None,
          "deadline_passed": bool, "new_version": int}, ...]}

    ``age_s`` counts from when this brick received the PREPARE (or restored the
    transaction after a restart); ``deadline_s`` is the transaction's deadline counted
    from then (None while it is still preparing), ``due_in_s`` the time left until it
    (negative once passed).  A prepared transaction past its deadline is in doubt."""

    TYPE: ClassVar[str] = "txns"


@attrs.frozen
class Resolve(Message):
    """Run termination (DESIGN §4) now: for ``txid``, or (``txid`` absent) for every
    prepared transaction past its deadline.  Before a transaction's deadline only a
    decision another member already made (committed, or aborted / never prepared) is
    followed; "all prepared, so commit" is inferred only past the deadline, when the
    coordinator has given up, or with ``force`` (the caller knows the coordinator is dead).
    Reply::

        {"brick": id, "resolved": [{"txid": [lib, counter], "pid": str,
          "decision": "commit" | "abort" | "in-doubt", "members": [brick id, ...],
          "states": [state each member reported, ...], "reason": str}, ...]}
    """

    TYPE: ClassVar[str] = "resolve"
    txid: TxnId | None = attrs.field(default=None, converter=_opt_pair)
    force: bool = attrs.field(default=False, validator=v.instance_of(bool))
