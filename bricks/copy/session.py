"""One copy session at the source (DESIGN §7, §8): its state and what it copies.

The state machine itself (who moves a session from one state to the next, and when) is
:class:`~dds.bricks.copy.source.CopySessions`; this module holds the states and the
session record every part of the source reads, so that there is one record per session
and no registry beside it (the session says whether it serves a move and, for a
recovery, the RG's partitions when it began).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IDelayedCall

from dds.partition import PartitionId

from dds.bricks.copy.snapshot import SnapshotInfo

if TYPE_CHECKING:
    from dds.bricks.copy.shared import SharedSnapshot

#: A session whose target sends nothing for this long is cancelled.
IDLE_S = 60.0
#: Ended sessions kept for ``status`` and for naming why a late request finds none.
ENDED_MEMORY = 32

#: An RG's partitions and their states, comparable across record versions
#: (``dds.bricks.copy.layout.partition_layout``).
Layout = tuple[tuple[str, str], ...]


class CopyState(enum.Enum):
    SNAPSHOTTING = "snapshotting"
    STREAMING = "streaming"
    FENCED = "fenced"
    READMITTING = "readmitting"
    DONE = "done"
    CANCELLED = "cancelled"


LIVE = frozenset({CopyState.SNAPSHOTTING, CopyState.STREAMING, CopyState.FENCED,
                  CopyState.READMITTING})
#: States in which the target may read snapshots and deltas.
SERVING = frozenset({CopyState.STREAMING, CopyState.FENCED, CopyState.READMITTING})


class CopySession:
    """One copy of an RG's partitions to one target (mutable: it is the state machine)."""

    __slots__ = ("id", "rg", "target", "pids", "fence_whole_copy", "move", "layout",
                 "state", "snapshots", "bytes_sent", "started", "last_request", "fenced_at",
                 "fence_held_s", "rate", "fence_timer", "idle_timer", "reason", "shared",
                 "lapse_s", "fence_due")

    def __init__(self, sid: int, rg: str, target: str, pids: tuple[PartitionId, ...],
                 fence_whole_copy: bool, now: float, *, move: bool = False,
                 layout: Layout | None = None) -> None:
        self.id = sid
        self.rg = rg
        self.target = target
        self.pids = pids
        #: Writes fenced from ``begin`` for the whole copy (the original DDS behaviour;
        #: ``full_lease`` on the wire), not only for the last delta.
        self.fence_whole_copy = fence_whole_copy
        #: A move's copy (DESIGN §8): its fence is held until lifted after the cut-over.
        self.move = move
        #: A recovery's: the RG's partitions when the copy began (readmission checks
        #: them); None for a move.
        self.layout = layout
        self.state = CopyState.SNAPSHOTTING
        self.snapshots: dict[str, SnapshotInfo] = {}
        self.bytes_sent = 0
        self.started = now
        #: Bytes per second the chunks may go at (0: unlimited).
        self.rate = 0.0
        self.last_request = now
        #: When this session fenced the partitions (None: not fenced).
        self.fenced_at: float | None = None
        #: How long the fence was held, once lifted: the write pause DESIGN §7 measures.
        self.fence_held_s: float | None = None
        self.fence_timer: IDelayedCall | None = None
        #: The lapse a renewing holder (a move's tool) asked for: the fence is lifted
        #: that long after its last renewal (None: never renewed).
        self.lapse_s: float | None = None
        #: When the fence timer was meant to fire (late: this brick did not run).
        self.fence_due = now
        self.idle_timer: IDelayedCall | None = None
        self.reason = ""
        #: The snapshot files this session uses (shared with other sessions or not).
        self.shared: list[SharedSnapshot] = []

    @property
    def size(self) -> int:
        return sum(s.size for s in self.snapshots.values())


__all__ = ["ENDED_MEMORY", "IDLE_S", "LIVE", "SERVING", "CopySession", "CopyState", "Layout"]
