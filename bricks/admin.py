"""The brick's administrative requests (``dds-admin``): status, recover, restore from
quarantine, failpoints, transactions in doubt and their resolution, replica checksums.

They read the whole brick (``status`` reports every component), so they are handed the
brick itself rather than a context: a view over it, with no state of its own.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import TYPE_CHECKING, Any, Callable

from twisted.logger import Logger

from dds import failpoints
from dds.config import format_address
from dds.errors import InvalidRequest, NotServing
from dds.messages import (Checksum, Failpoint, Message, Recover, Resolve, RestoreQuarantined,
                          Status, Txns)
from dds.version import VERSION

from dds.bricks.mapstate import parse_pid
from dds.bricks.partstore import summarize_file

if TYPE_CHECKING:
    from dds.bricks.server import Brick


class AdminRequests:
    log = Logger()

    def __init__(self, brick: Brick) -> None:
        self.brick = brick
        self.id = brick.id

    def handlers(self) -> dict[type[Message], Callable[[Any], Any]]:
        return {Status: self.status, RestoreQuarantined: self.restore_quarantined,
                Checksum: self.checksum, Failpoint: self.failpoint, Txns: self.txns,
                Resolve: self.resolve, Recover: self.recover}

    def recover(self, msg: Recover) -> dict[str, Any]:
        """``dds-admin recover``: re-sync now (an RG, or every RG this brick is in)."""
        maps = self.brick.maps
        if msg.rg is not None and (msg.rg not in maps.map.rgs or
                                   maps.map.rgs[msg.rg].member_state(self.id) is None):
            raise InvalidRequest(f"brick {self.id} is not a member of {msg.rg!r}")
        rgs = [msg.rg] if msg.rg else [r.name for r in maps.map.rgs.values()
                                       if r.member_state(self.id) is not None]
        started = [rg for rg in rgs
                   if self.brick.recoveries.ensure(rg, why="requested by dds-admin recover",
                                                   fence_whole_copy=msg.full_lease)]
        return {"started": started}

    def status(self, msg: Status) -> dict[str, Any]:
        b = self.brick
        m = b.maps.map
        return {
            "id": self.id,
            "address": format_address(b.config.advertise_host, b.port),
            "pid": os.getpid(),
            "version": VERSION,
            "uptime_s": time.time() - b.started,
            "durability": b.config.brick.durability,
            "map_fp": m.fp,
            "map_version": m.version,
            "digest": [list(d) for d in m.digest],
            "partitions": sorted(b.storage.partitions()),
            "prepared": len(b.participant.active),
            "in_doubt": [list(t.txid) for t in b.participant.in_doubt()],
            "failpoints": failpoints.armed(),
            "members": {rg.name: rg.member_state(self.id) for rg in m.rgs.values()
                        if rg.member_state(self.id) is not None},
            "blocked": sorted(b.recoveries.blocked),
            "leases": b.leases.status(),
            "recovery": b.recoveries.status(),
            "copies": b.copies.status(),
            "moves_in": b.moves_in.status(),
            "changes": b.changes.status(),
            "metrics": b.metrics.snapshot(),
            "auth": self._auth_status(),
            "quarantine": b.quarantine.status(),
            "scrub": b.checksum_walk.status(),
        }

    def restore_quarantined(self, msg: RestoreQuarantined) -> dict[str, Any]:
        """``dds-admin repair``: a quarantined replica back in service, if a record of
        this brick lists it again (a recovery or the RG's other members then bring it up
        to date like any replica)."""
        pid = parse_pid(msg.pid)
        reply = self.brick.quarantine.restore(str(pid),
                                              listed=pid in self.brick.maps.my_partitions())
        self.brick.recoveries.check()
        return reply

    def _auth_status(self) -> dict[str, Any]:
        """How this brick authenticates peers; in TLS mode, when its certificate (or the
        CA) expires, for ``dds-admin status`` to warn."""
        config = self.brick.config
        tls = config.credentials.tls
        if tls is None:
            return {"mode": "secret"}
        from dds.tls import seconds_to_expiry
        return {"mode": "tls", "cert_expires_in_days": round(seconds_to_expiry(tls) / 86400, 2),
                "warn_days": config.auth.cert_warn_days}

    def failpoint(self, msg: Failpoint) -> dict[str, Any]:
        """Arm or disarm a failpoint of this process (tests only; see
        ``docs/failpoints.md``).  Name and action were validated on decoding.  Refused
        unless ``brick.allow_failpoints``: the secret alone must not let a peer crash a
        production brick."""
        if not self.brick.config.brick.allow_failpoints:
            raise InvalidRequest(f"failpoints are disabled on brick {self.id} "
                                 "(set brick.allow_failpoints = true on test clusters)")
        if msg.action is None:
            failpoints.disarm(msg.name)
            self.log.warn("failpoint {name} disarmed", name=msg.name)
        else:
            action = failpoints.arm(msg.name, msg.action)
            self.log.warn("failpoint {name} armed: {action}", name=msg.name,
                          action=str(action))
        return {"armed": failpoints.armed()}

    def txns(self, msg: Txns) -> dict[str, Any]:
        """Every active transaction (``dds-admin txns`` filters the in-doubt ones)."""
        return {"brick": self.id, "txns": self.brick.termination.listing()}

    async def resolve(self, msg: Resolve) -> dict[str, Any]:
        """Termination now, on request (``dds-admin repair``)."""
        results = await self.brick.termination.resolve(msg.txid, msg.force)
        self.brick.metrics.inc("txn_resolutions_total", len(results))
        return {"brick": self.id, "resolved": [r.to_wire() for r in results]}

    async def checksum(self, msg: Checksum) -> dict[str, int]:
        """Live keys, checksum and last lsn of the replica's durable rows (those of the
        current reactor turn aside), read in a worker thread: on the reactor thread a
        100 MB replica held every request of the brick for 0.4 s."""
        b = self.brick
        pid = str(parse_pid(msg.pid))
        if not b.storage.has_partition(pid):
            raise NotServing(f"brick {self.id} holds no replica of {pid}")
        if pid in b.damage.damaged:
            raise b.damage.error(pid)
        try:
            b.storage.open_partition(pid)
            path = b.storage.partition_path(pid)
            summary: dict[str, int] = await b._in_thread(summarize_file, path)
        except sqlite3.DatabaseError as e:
            raise b.damage.read_error(pid, e) from None
        return summary


__all__ = ["AdminRequests"]
