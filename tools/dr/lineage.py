"""Which partitions of the primary the DR follower reads, from where, and what it has
applied of each: the follower's state, pure (no I/O but the checkpoint file).

- **Start.**  A partition is read from its checkpoint (the last position the DR site was
  known to hold), else from where the DR site's marks say it holds it, else from the
  beginning (applying is idempotent by version).  A
  partition of the checkpoint that the primary no longer has (it split or merged while
  the follower was stopped) is read anyway: its stream says ``ended`` at once and names
  the successors.
- **Splits and merges.**  When a partition's stream ends, each successor is read from
  the position the ended one reached (the primary translates it), once no other
  partition still read overlaps it: a merge's successor starts when both halves ended,
  from the older of their positions, so neither half's tail is missed.
- **Checkpoint.**  Per partition: the position the DR site holds and the brick that
  made it (or where it will start, with no brick: not yet applied).  An ended partition
  stays in it until its successors started.  Written whole to a temporary file and
  renamed (``bricks/atomicfile.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from dds.changepos import BEGINNING, decode
from dds.errors import InvalidRequest
from dds.partition import PartitionId

from dds.bricks.atomicfile import replace_file
from dds.tools.runner import AdminError

__all__ = ["Part", "Lineage", "Checkpoint", "load_checkpoint", "save_checkpoint",
           "safe_time"]

#: The checkpoint file's format.
FORMAT = 1


def safe_time(position: str) -> float:
    """A position's safe time (0 for ``beginning`` or ``now``, or a bad token)."""
    if position in (BEGINNING, "now", ""):
        return 0.0
    try:
        return decode(position).safe_time
    except InvalidRequest:
        return 0.0


@attrs.define
class Part:
    """One partition of the primary the follower reads."""

    pid: str
    #: Where its cursor starts.
    start: str
    #: The last position (of this partition's stream) whose rows every DR replica they
    #: route to holds, and the primary brick that made it; "" before the first.
    applied: str = ""
    applied_by: str = ""
    ended: bool = False
    successors: tuple[str, ...] = ()

    def took(self, position: str, brick: str) -> None:
        """The DR site holds everything of this partition up to ``position``."""
        self.applied, self.applied_by = position, brick

    @property
    def saved(self) -> tuple[str, str]:
        """What the checkpoint keeps: (position, brick), brick "" if not applied."""
        return (self.applied, self.applied_by) if self.applied else (self.start, "")

    def lag(self, now: float) -> float | None:
        """Seconds between ``now`` and the safe time of what the DR site holds."""
        if not self.applied:
            return None
        return max(0.0, now - safe_time(self.applied))


def _overlap(a: str, b: str) -> bool:
    pa, pb = PartitionId.parse(a), PartitionId.parse(b)
    return pa.covers(pb) or pb.covers(pa)


class Lineage:
    """The partitions followed, and the successors waiting for their predecessors."""

    def __init__(self) -> None:
        self.parts: dict[str, Part] = {}

    def initial(self, active: Iterable[str], saved: Mapping[str, tuple[str, str]],
                held: Mapping[str, tuple[str, str]]) -> list[Part]:
        """The partitions to read at start: every saved one, and every active one not
        overlapping a saved one (from what the site holds of it, else the beginning)."""
        for pid, (position, brick) in sorted(saved.items()):
            self.parts[pid] = Part(pid, position, position if brick else "", brick)
        for pid in sorted(set(active)):
            if any(_overlap(pid, s) for s in saved):
                continue
            position, brick = held.get(pid, (BEGINNING, ""))
            self.parts[pid] = Part(pid, position, position if brick else "", brick)
        return list(self.parts.values())

    def running(self) -> list[Part]:
        return [p for p in self.parts.values() if not p.ended]

    def ended(self, pid: str, successors: Iterable[str]) -> list[Part]:
        """``pid``'s stream ended, naming ``successors``: the parts to start now."""
        part = self.parts[pid]
        part.ended = True
        part.successors = tuple(sorted(successors))
        started: list[Part] = []
        for succ in part.successors:
            if succ in self.parts:
                continue
            if any(_overlap(succ, p.pid) for p in self.running()):
                continue            # a merge: the other half is still read
            preds = [p for p in self.parts.values() if p.ended and succ in p.successors]
            start = min((p.saved[0] for p in preds), key=safe_time)
            self.parts[succ] = Part(succ, start)
            started.append(self.parts[succ])
        for p in [p for p in self.parts.values() if p.ended]:
            if all(s in self.parts for s in p.successors):
                del self.parts[p.pid]
        return started

    def saved(self) -> dict[str, tuple[str, str]]:
        return {pid: p.saved for pid, p in sorted(self.parts.items())}


@attrs.frozen
class Checkpoint:
    """The follower's progress: which primary, which DR site, and per partition
    (position, brick that made it or "")."""

    primary: str
    site: str
    partitions: dict[str, tuple[str, str]]

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT, "primary": self.primary, "site": self.site,
                           "partitions": {p: list(v) for p, v in self.partitions.items()}},
                          indent=1, sort_keys=True).encode()


def _parsed(data: Any) -> Checkpoint:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not a format {FORMAT} checkpoint")
    parts: dict[str, tuple[str, str]] = {}
    for pid, entry in data["partitions"].items():
        PartitionId.parse(pid)
        position, brick = entry
        if not isinstance(position, str) or not isinstance(brick, str):
            raise ValueError(f"partition {pid}: [position, brick] expected")
        parts[pid] = (position, brick)
    return Checkpoint(str(data["primary"]), str(data["site"]), parts)


def load_checkpoint(path: Path, primary: str, site: str) -> Checkpoint | None:
    """The checkpoint in ``path`` (None if there is none); ``AdminError`` if it is
    unreadable or belongs to another pair of clusters."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise AdminError(f"{path}: cannot read the follower's checkpoint: "
                         f"{e.strerror or e}") from None
    try:
        ckpt = _parsed(json.loads(raw))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise AdminError(f"{path}: not a follower checkpoint ({e}); move it away to start "
                         "from the primary's tags") from None
    if (ckpt.primary, ckpt.site) != (primary, site):
        raise AdminError(f"{path} is the checkpoint of a follower of {ckpt.primary!r} into "
                         f"{ckpt.site!r}, not of {primary!r} into {site!r}; give another "
                         "--state file")
    return ckpt


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Replace the checkpoint atomically (the old one or the new one, never a mix)."""
    replace_file(path, ckpt.to_json(), fsync=True)
