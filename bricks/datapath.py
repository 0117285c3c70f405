"""The brick's data requests: reads (GET, a repair's ROW_READ), the 2PC participant's
requests (PREPARE, COMMIT, ABORT, TXN_STATE) and the gates every one of them passes.

These are the hot path.  ``Brick.handle`` checks the bodies of GET, PREPARE and COMMIT
field by field and calls the fast entries here (``read_fast``, ``get_fast``,
``prepare_fast``, ``commit_fast``, bound once when the brick is built) without building
a message object; anything unusual returns None from them or goes through the general
entries (``handlers()``), whose decoding names the problem.

The gates (DESIGN §2, §6–7): the route's ``(version, fp)`` against this brick's map
(``maps.check``, remembered per RG and partition while the map is the same object), the
key in the partition, a valid membership lease, the RG not being re-synced.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any, Callable, Sequence

from twisted.internet.defer import Deferred

from dds.config import BrickConfig
from dds.errors import (InvalidRequest, KeyTooLarge, NotServing, ReplayRefused, ReplicaDamaged,
                        ValueTooLarge)
from dds.maps import ClusterMap
from dds.messages import Abort, Commit, Get, Message, Prepare, RowRead, TxnState
from dds.partition import PartitionId, key_hash
from dds.rpc import RPCProtocol

from dds.bricks.context import BrickContext
from dds.bricks.drmode import DRGate
from dds.bricks.mapstate import parse_pid
from dds.bricks.partstore import ReadResult
from dds.bricks.rowcheck import row_checksum

if TYPE_CHECKING:
    from dds.bricks.damage import Damage
    from dds.bricks.diskspace import DiskSpace
    from dds.bricks.leases import Leases
    from dds.bricks.locks import LockTable
    from dds.bricks.recovery import Recoveries
    from dds.bricks.termination import Terminator

#: Bound of the remembered map checks (``DataPath.gate``): a peer sending made-up partition
#: ids must not grow it without end.
_GATES_MAX = 4096
#: A remembered map check: (version, fp, partition, mask, prefix, the RG's active
#: members) of a checked route.
Gate = tuple[int, int, PartitionId, int, int, tuple[str, ...]]
#: Where a request the handler answers later (``LATER``) is answered: its connection,
#: request id and type, and when it arrived (for ``request_seconds``).
To = tuple[RPCProtocol, int, str, float]
#: ``answer(to, result)``: the dispatcher's answer to a request finished later, counted.
Answer = Callable[[To, Any], None]


class DataPath:
    """Reads and the participant's requests, with their gates; no state of its own but
    the remembered map checks and whether the brick is stopping."""

    def __init__(self, ctx: BrickContext, config: BrickConfig, locks: LockTable,
                 leases: Leases, termination: Terminator, recoveries: Recoveries,
                 damage: Damage, disk: DiskSpace, answer: Answer) -> None:
        self.id = ctx.id
        self.maps = ctx.maps
        self.metrics = ctx.metrics
        self.storage = ctx.storage
        self.participant = ctx.participant
        self.locks = locks
        self.leases = leases
        self.termination = termination
        self.recoveries = recoveries
        self.damage = damage
        self.disk = disk
        #: The dispatcher's answer to a PREPARE or COMMIT finished later (``LATER``).
        self.answer = answer
        self.read_wait_s = config.timeouts.read_wait_ms / 1000.0
        self.max_key = config.limits.max_key_bytes
        self.max_value = config.limits.max_value_bytes
        self.ignore_read_lease = config.brick.unsafe_ignore_read_lease
        #: What the site's DR record allows a write (DESIGN §12).
        self.dr = DRGate(ctx.maps, ctx.clock)
        #: Set by ``stop``: no new PREPARE is voted on.
        self.stopping = False
        self._gates: dict[tuple[str, str], Gate] = {}
        self._gates_map: ClusterMap | None = None

    def handlers(self) -> dict[type[Message], Callable[[Any], Any]]:
        return {Get: self.get, Prepare: self.prepare, Commit: self.commit, Abort: self.abort,
                TxnState: self.txn_state, RowRead: self.row_read}

    def stop(self) -> None:
        self.stopping = True

    # -- the gates -----------------------------------------------------------------------

    def _check_key(self, key: bytes) -> None:
        if len(key) > self.max_key:
            raise KeyTooLarge(f"key of {len(key)} bytes exceeds the limit of "
                              f"{self.max_key} bytes")

    def _gated(self, pid_text: str, rg: str, version: int, fp: int) -> Gate | None:
        """What ``gate`` remembered for these routing fields under the current map."""
        if self._gates_map is not self.maps.map:
            self._gates = {}
            self._gates_map = self.maps.map
        hit = self._gates.get((rg, pid_text))
        if hit is not None and hit[0] == version and hit[1] == fp:
            return hit
        return None

    def gate(self, pid_text: str, rg: str, version: int, fp: int) -> Gate:
        """``maps.check`` (DESIGN §2), remembered per RG and partition for as long as the
        map stays the same object: a data operation that passed it once costs a lookup.
        With the partition come its hash mask and prefix (``PartitionId.owns``)."""
        hit = self._gated(pid_text, rg, version, fp)
        if hit is not None:
            return hit
        pid, rec = self.maps.check(pid_text, rg, version, fp)
        gate = (rec.version, rec.fp, pid, pid.mask, pid.prefix, rec.active_members)
        if str(pid) == pid_text and len(self._gates) < _GATES_MAX:
            self._gates[(rg, pid_text)] = gate
        return gate

    def _check_serving(self, rg: str, read: bool, pid: str | None = None) -> None:
        """DESIGN §6–7: no reads and no YES votes without a valid lease, and nothing at
        all from an RG still being re-synced (``ReplicaDamaged`` for a partition whose
        file was unreadable: ``bricks/damage.py``)."""
        if rg in self.recoveries.blocked:
            if pid is not None and pid in self.damage.damaged:
                raise self.damage.error(pid)
            raise NotServing(f"brick {self.id} is re-syncing {rg}")
        if not self.leases.valid(rg) and not (read and self.ignore_read_lease):
            self.metrics.inc("no_lease_refusals_total")
            raise NotServing(f"brick {self.id} holds no valid membership lease for {rg}")

    # -- reads ---------------------------------------------------------------------------

    def get_fast(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """GET without building a message object: the hottest request.  Anything unusual
        (a bad type, a lock, an error) returns None and takes the general path, which
        gives the precise answer."""
        r = self.read_fast(body["pid"], body["rg"], body["rg_version"], body["rg_fp"],
                           body["key"])
        return None if r is None else {"value": r.value, "version": r.version}

    def read_fast(self, pid_text: Any, rg: Any, version: Any, fp: Any, key: Any
                  ) -> ReadResult | None:
        if not (type(key) is bytes and type(pid_text) is str and type(rg) is str
                and type(version) is int and type(fp) is int
                and len(key) <= self.max_key):
            return None
        gate = self._gated(pid_text, rg, version, fp)
        if (gate is None or key_hash(key) & gate[3] != gate[4]
                or self.locks.holder((pid_text, key)) is not None
                or rg in self.recoveries.blocked
                or not (self.ignore_read_lease or self.leases.valid(rg))):
            return None
        try:
            return self.storage.read(pid_text, key)
        except ReplicaDamaged:
            # Counted here: the caller counts only the reads it answers.
            self.metrics.inc("requests", type="get")
            self.metrics.inc("errors", code=ReplicaDamaged.code)
            raise
        except sqlite3.DatabaseError as e:
            raise self.damage.read_error(pid_text, e) from None

    def get(self, msg: Get) -> Any:
        self._check_key(msg.key)
        pid = self.gate(msg.pid, msg.rg, msg.rg_version, msg.rg_fp)[2]
        self._check_serving(msg.rg, read=True, pid=str(pid))
        if not pid.owns(msg.key):
            raise InvalidRequest(f"key does not belong to partition {pid}")
        lock_key = (str(pid), msg.key)
        if self.locks.holder(lock_key) is None:
            r = self.read(str(pid), msg.key)
            return {"value": r.value, "version": r.version}
        return self._get_after_outcome(msg, lock_key)

    async def _get_after_outcome(self, msg: Get, lock_key: tuple[str, bytes]) -> Any:
        """A prepared key may already be committed on another replica: wait for the
        outcome here so that no read returns a value older than one already visible."""
        self.metrics.inc("reads_waited_total")
        self.termination.nudge(lock_key)
        await self.locks.wait_free(lock_key, self.read_wait_s)
        pid, _rec = self.maps.check(msg.pid, msg.rg, msg.rg_version, msg.rg_fp)
        self._check_serving(msg.rg, read=True, pid=str(pid))
        r = self.read(str(pid), msg.key)
        return {"value": r.value, "version": r.version}

    def row_read(self, msg: RowRead) -> dict[str, Any]:
        """A member repairing a damaged row asks for ours (``bricks/selfrepair.py``):
        answered while this brick is an active member of the RG in its own record (with
        or without a lease, re-syncing after a restart or not: no write commits without
        an active member), for a partition the RG lists and is not still filling
        (incoming); ``prepared`` if a transaction on the key is in progress here.  A
        damaged row here answers ``ReplicaDamaged`` (and is repaired here too)."""
        rec = self.maps.map.rgs.get(msg.rg)
        pid = parse_pid(msg.pid)
        if rec is None or self.id not in rec.active_members \
                or rec.partition_state(pid) in (None, "incoming") \
                or not self.storage.has_partition(str(pid)):
            raise NotServing(f"brick {self.id} is not an active member holding {msg.pid} "
                             f"of {msg.rg}")
        if not pid.owns(msg.key):
            raise InvalidRequest(f"key does not belong to partition {pid}")
        if self.locks.holder((str(pid), msg.key)) is not None:
            return {"prepared": True}
        r = self.read(str(pid), msg.key)
        return {"value": r.value, "version": r.version, "prepared": False,
                "checksum": row_checksum(msg.key, r.version, r.value)}

    def read(self, pid: str, key: bytes) -> ReadResult:
        try:
            return self.storage.read(pid, key)
        except sqlite3.DatabaseError as e:
            raise self.damage.read_error(pid, e) from None

    # -- the participant's requests (DESIGN §4) ------------------------------------------

    def prepare(self, msg: Prepare) -> dict[str, int] | Deferred[dict[str, int]]:
        return self._prepare(msg.txid, msg.ts, msg.pid, msg.key, msg.op, msg.value,
                             msg.expected_version, msg.rg, msg.rg_version, msg.rg_fp,
                             msg.timeout_ms, msg.participants)

    def prepare_fast(self, args: tuple[dict[str, Any], To]) -> Any:
        """A PREPARE whose body passed ``_prepare_body_ok`` (``bricks/server.py``),
        answered through ``answer`` if it waits for its vote's record."""
        b, to = args
        txid, ts = b["txid"], b["ts"]
        return self._prepare((txid[0], txid[1]), (ts[0], ts[1]), b["pid"], b["key"], b["op"],
                             b["value"], b["expected_version"], b["rg"], b["rg_version"],
                             b["rg_fp"], b["timeout_ms"], b["participants"], to)

    def commit_fast(self, args: tuple[tuple[int, int], To]) -> Any:
        txid, to = args
        return self.participant.commit(txid, self.answer, to)

    def _prepare(self, txid: tuple[int, int], ts: tuple[int, int], pid_text: str, key: bytes,
                 op: str, value: bytes | None, expected_version: int | None, rg: str,
                 rg_version: int, rg_fp: int, timeout_ms: int,
                 participants: Sequence[str] = (), to: To | None = None) -> Any:
        """A validated PREPARE: the gates of DESIGN §2 and §6, then the vote.  The
        participants must be the active members of the record the route names: those
        are the members termination asks (DESIGN §4), so a list that differs (a bug, or
        a forged request) is refused before anything is held."""
        if self.stopping:
            raise NotServing(f"brick {self.id} is shutting down")
        if self.disk.full:
            raise self.disk.refusal()
        try:
            self.dr.check_write(op)
        except ReplayRefused as e:      # counted for `dds-admin dr promote --wait`
            self.metrics.inc("dr_replays", outcome=str(e.data["reason"]))
            raise
        self._check_key(key)
        if value is not None and len(value) > self.max_value:
            raise ValueTooLarge(f"value of {len(value)} bytes exceeds the limit of "
                                f"{self.max_value} bytes")
        _v, _fp, pid, mask, prefix, members = self.gate(pid_text, rg, rg_version, rg_fp)
        if key_hash(key) & mask != prefix:
            raise InvalidRequest(f"key does not belong to partition {pid}")
        named = tuple(participants)     # once per PREPARE: compared, then recorded
        if named and named != members:
            raise InvalidRequest(f"participants {list(named)} are not the active "
                                 f"members {list(members)} of {rg} v{rg_version}")
        self._check_serving(rg, read=False, pid=pid_text)

        def recheck() -> Any:
            checked = self.maps.check(pid_text, rg, rg_version, rg_fp)
            self._check_serving(rg, read=False)
            return checked
        return self.participant.vote(txid, ts, pid, key, op, value, expected_version,
                                     timeout_ms, recheck, pid_text,
                                     None if to is None else self.answer, to,
                                     named or members)

    def commit(self, msg: Commit) -> dict[str, int] | Deferred[dict[str, int]]:
        return self.participant.commit(msg.txid)

    def abort(self, msg: Abort) -> dict[str, Any]:
        return self.termination.coordinator_abort(msg.txid)

    def txn_state(self, msg: TxnState) -> dict[str, str]:
        """A replica that needs a copy (its file or the log was damaged) may have lost a
        YES vote: "never prepared here" (abort) would be a guess that can undo a write
        the client was told succeeded.  It answers ``ReplicaDamaged`` instead, which the
        asking member treats as unreachable: excluded, then decided among the rest."""
        if self.damage.damaged and not msg.peek \
                and self.participant.state_of(msg.txid) is None:
            pid = str(parse_pid(msg.pid)) if msg.pid is not None else None
            if pid is None or pid in self.damage.damaged:
                raise self.damage.error(pid or "this brick")
        return self.termination.answer(msg)


__all__ = ["Answer", "DataPath", "Gate", "To"]
