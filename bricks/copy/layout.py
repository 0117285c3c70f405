"""An RG record's partitions as a copy sees them (DESIGN §7, §8).

A recovery copies the partitions its RG lists when the copy begins; a move or split fills
an *incoming* partition only on the members it planned with.  So a recovery waits while
its RG lists an incoming partition, and its readmission is refused if the RG's partitions
changed during the copy (a cut-over, a drop): both sides compare these layouts.
"""

from __future__ import annotations

from dds.records import RGRecord

from dds.bricks.copy.session import Layout


def partition_layout(rec: RGRecord) -> Layout:
    """An RG record's partitions and their states, comparable across versions: what a
    recovery copies, and what must not change before its readmission."""
    return tuple(sorted((str(e.pid), e.state) for e in rec.partitions))


def incoming(rec: RGRecord) -> list[str]:
    """The partitions ``rec`` lists incoming (being filled by a move or a split)."""
    return [str(e.pid) for e in rec.partitions if e.state == "incoming"]


def render(layout: Layout) -> str:
    return ", ".join(f"{p} {state}" for p, state in layout) or "none"


__all__ = ["incoming", "partition_layout", "render"]
