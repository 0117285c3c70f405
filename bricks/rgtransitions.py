"""The record each kind of RG record change makes from the current one (DESIGN §5, §8),
computed the same way by the change's coordinator (``bricks/rgchange.py``) and by each
voter (``bricks/rgvoter.py``), which votes only for exactly that record."""

from __future__ import annotations

from typing import cast

from dds.errors import InvalidRequest, Refused
from dds.maps import ClusterMap
from dds.records import MEMBER_STATES, Member, MemberState, RGRecord

from dds.bricks.mapstate import MapState


def member_state(text: str) -> MemberState:
    """A member state from a message (validated there against ``MEMBER_STATES``)."""
    if text not in MEMBER_STATES:
        raise InvalidRequest(f"unknown member state {text!r}")
    return cast(MemberState, text)


def added(rec: RGRecord, brick: str, cmap: ClusterMap) -> RGRecord:
    """``rec`` with ``brick`` as a new, recovering member (it joins by recovery)."""
    if rec.member_state(brick) is not None:
        raise Refused(f"{brick} is already a member of {rec.name}")
    bricks = cmap.bricks
    if brick not in bricks:
        raise Refused(f"no brick record for {brick}")
    domain = bricks[brick].failure_domain
    shared = [m.brick for m in rec.members
              if m.brick in bricks and bricks[m.brick].failure_domain == domain]
    if shared:
        raise Refused(f"{brick} shares host {domain!r} with {shared} in {rec.name}")
    return rec.with_changes(members=[*rec.members, Member(brick, "recovering")])


def removed(rec: RGRecord, brick: str) -> RGRecord:
    """``rec`` without ``brick``; never its last active member."""
    if rec.member_state(brick) is None:
        raise Refused(f"{brick} is not a member of {rec.name}")
    if rec.active_members == (brick,):
        raise Refused(f"{brick} is the last active member of {rec.name}")
    return rec.with_changes(members=[m for m in rec.members if m.brick != brick])


def check_partitions(maps: MapState, rec: RGRecord, new: RGRecord) -> None:
    """A partition becomes active here only if no other RG has it active: two RGs
    serving one key range would each accept writes the other never sees.  And the
    new record must leave this brick's map usable (``MapState.check_acceptable``):
    checked at the vote, so that no committed change is refused at its commit."""
    for pid in new.active_partitions - rec.active_partitions:
        for other in maps.map.rgs.values():
            if other.name != rec.name and pid in other.active_partitions:
                raise Refused(f"{pid} is still active in {other.name} "
                              f"v{other.version} here")
    maps.check_acceptable([new])


__all__ = ["added", "check_partitions", "member_state", "removed"]
