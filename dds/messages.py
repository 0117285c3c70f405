"""Request bodies of the wire protocol, as small validated attrs classes (DESIGN §10).

Each request type has a class, declared once for both ends: the sender builds it and
sends it (``RPCProtocol.send``, which puts ``to_wire``'s body in the frame); the receiver's
``decode_request(type, body)`` builds it back from a decoded frame and turns every shape
or type problem into ``InvalidRequest`` naming the field, so a handler only ever sees
well-formed requests.  Replies are plain dicts documented on each class; those read
across modules have a checked type in ``dds.replies``.
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


#: The compact read, for the hottest request: ``Get``'s fields by position, body
#: ``[pid, rg, rg_version, rg_fp, key]``, reply ``[value, version]``: no field names to
#: encode and decode.  Sent only to a brick that announced the ``g`` feature in its
#: handshake (``dds.rpc.FEATURES``); checked exactly as ``get``.
GET_COMPACT = "g"
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


# -- administration ----------------------------------------------------------------------

@attrs.frozen
class Status(Message):
    """Reply: the brick's status dict (id, map digest and fingerprint, partitions,
    counters) for ``dds-admin status``."""

    TYPE: ClassVar[str] = "status"
    TITLE: ClassVar[str] = "status request"


@attrs.frozen
class RestoreQuarantined(Message):
    """Put the newest quarantined file of ``pid`` back as this brick's replica (issue 13:
    ``dds-admin repair``), which an RG record of this brick must list.  Reply:
    ``{"pid": str, "file": str, "quarantined_at": float}``."""

    TYPE: ClassVar[str] = "restore_quarantined"
    TITLE: ClassVar[str] = "quarantine restore"
    ROLES: ClassVar[frozenset[str]] = ADMIN_ONLY
    pid: str = attrs.field(validator=_str)


@attrs.frozen
class Checksum(Message):
    """Reply: ``{"count": live keys, "checksum": int, "last_lsn": int}`` of one replica."""

    TYPE: ClassVar[str] = "checksum"
    TITLE: ClassVar[str] = "checksum request"
    pid: str = attrs.field(validator=_str)


@attrs.frozen
class Ping(Message):
    """Reply: ``{}``; used by liveness checks and the echo floor."""

    TYPE: ClassVar[str] = "ping"
    TITLE: ClassVar[str] = "ping"
    ROLES: ClassVar[frozenset[str]] = ANY_ROLE


@attrs.frozen
class TxnState(Message):
    """Termination query between members.  Reply:
    ``{"state": "prepared" | "committed" | "aborted"}`` (or ``"unknown"`` to a ``peek``); a
    member that never prepared the transaction records it as aborted before answering,
    unless the query only peeks.  ``pid``, ``key`` and
    ``new_version`` let a member that has forgotten the transaction (it restarted) answer
    from its data: the key at ``new_version`` or later means it was committed there."""

    TYPE: ClassVar[str] = "txn_state"
    TITLE: ClassVar[str] = "transaction state query"
    ROLES: ClassVar[frozenset[str]] = PEERS
    txid: TxnId = attrs.field(converter=_pair)
    pid: str | None = attrs.field(default=None, validator=v.optional(_str))
    key: bytes | None = attrs.field(default=None, validator=_opt_bytes)
    new_version: int | None = attrs.field(default=None, validator=v.optional(_u64))
    #: Only look (an early question, before the deadline, from a member whose key is
    #: wanted): no side effects, and ``"unknown"`` for a transaction not prepared here.
    peek: bool = attrs.field(default=False, validator=v.instance_of(bool))


@attrs.frozen
class Failpoint(Message):
    """Arm (``action`` given) or disarm (``action`` None) one failpoint of the brick
    process (``dds/failpoints.py``, ``docs/failpoints.md``).  Reply:
    ``{"armed": {name: action, ...}}``, every failpoint armed afterwards."""

    TYPE: ClassVar[str] = "failpoint"
    TITLE: ClassVar[str] = "failpoint request"
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
    TITLE: ClassVar[str] = "transaction list"


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
    TITLE: ClassVar[str] = "transaction resolution"
    txid: TxnId | None = attrs.field(default=None, converter=_opt_pair)
    force: bool = attrs.field(default=False, validator=v.instance_of(bool))


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


# -- recovery by partition copy (DESIGN §7) -----------------------------------------------

_session = v.and_(v.instance_of(int), v.ge(0), v.lt(1 << 63))


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
