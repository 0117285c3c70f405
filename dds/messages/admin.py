"""Administrative requests: status, checksums, quarantine, failpoints, in-doubt
transactions and their resolution, the liveness ping and termination's query."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
from attrs import validators as v

from dds import failpoints
from dds.messages.base import (ADMIN_ONLY, ANY_ROLE, Message, PEERS, TxnId, _opt_bytes, _pair,
                               _str, _u64)


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


__all__ = ["Checksum", "Failpoint", "Ping", "Resolve", "RestoreQuarantined", "Status",
           "TxnState", "Txns"]
