"""A transaction as the 2PC participant holds it (DESIGN §4): its named state and what
it records (``bricks/participant.py`` moves it from state to state)::

    PREPARING ──lock, condition, vote recorded──▶ PREPARED ──COMMIT──▶ COMMITTING
        │                                            │                     │ durable
        └────────────── NO vote / ABORT ─────────────┴──▶ ABORTED          ▼
                                                                       COMMITTED
"""

from __future__ import annotations

import enum
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from dds.messages import TxnId
from dds.partition import PartitionId

#: How many decided transactions are remembered for repeated COMMIT/ABORT answers.
DECIDED_MEMORY = 100_000

#: Where a vote or a commit that finishes later is answered without a Deferred:
#: ``reply(to, result)`` with the reply body or the exception (see ``dds.rpc.LATER``).
Reply = Callable[[Any, Any], None]


class TxnState(enum.Enum):
    PREPARING = "preparing"
    PREPARED = "prepared"
    COMMITTING = "committing"
    COMMITTED = "committed"
    ABORTED = "aborted"


class Transaction:
    __slots__ = ("txid", "pid", "pid_text", "key", "op", "value", "new_version", "state",
                 "timer", "wake_at", "prepared_at", "due_at", "waiters", "queried", "ts",
                 "expected_version", "timeout_ms", "lock_key", "checksum", "origin",
                 "asked_at", "participants", "voted_ms")

    def __init__(self, txid: TxnId, pid: PartitionId, key: bytes, op: str,
                 value: bytes | None, now: float, ts: tuple[int, int] = (0, 0),
                 expected_version: int | None = None, timeout_ms: int = 0,
                 pid_text: str | None = None) -> None:
        self.txid = txid
        self.pid = pid
        self.pid_text = pid_text if pid_text is not None else str(pid)
        self.key = key
        self.op = op
        self.value = value
        self.ts = ts
        self.expected_version = expected_version
        self.timeout_ms = timeout_ms
        #: The key's lock: by partition id text, whose hash Python keeps.
        self.lock_key = (self.pid_text, key)
        self.new_version = 0
        #: The staged row's checksum (``bricks/rowcheck.py``), computed once the vote
        #: fixes ``new_version``; it goes with the row into the log and the file.
        self.checksum: int | None = None
        self.state = TxnState.PREPARING
        #: A timer armed for this transaction alone (after a restart, a retry of
        #: termination, a failed commit); the common deadline is ``wake_at``.
        self.timer: IDelayedCall | None = None
        #: When the participant's deadline sweep hands it to ``on_deadline`` (None: not
        #: armed); one timer serves every prepared transaction.
        self.wake_at: float | None = None
        self.prepared_at = now
        #: When termination first becomes due (the deadline timer's time); None until the
        #: YES vote is recorded.  Later retries of termination do not move it.
        self.due_at: float | None = None
        #: COMMITs that arrived while the commit was being made durable (a retry).
        self.waiters: list[Deferred[int]] = []
        #: Termination has seen this member prepared (it answered a query, or started its
        #: own termination): from then on the members decide, and a coordinator's ABORT is
        #: refused, or some member could commit by "all prepared" while others abort.
        self.queried = False
        #: The connection the PREPARE came on (None when unknown): once it is closed,
        #: the coordinator is likely gone, and termination need not wait for the deadline.
        self.origin: Any = None
        #: When a member whose key this transaction holds last asked the others early.
        self.asked_at: float | None = None
        #: The members the coordinator sent the PREPARE to: the ones termination asks
        #: (DESIGN §4).  Empty for a vote recorded before the list was kept.
        self.participants: tuple[str, ...] = ()
        #: When the YES vote was recorded, ms on this brick's clock, kept only on a
        #: primary a DR site follows (the vote's ``at``: ``bricks/drtags.py``); else 0.
        self.voted_ms = 0


__all__ = ["DECIDED_MEMORY", "Reply", "Transaction", "TxnState"]
