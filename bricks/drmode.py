"""What this site's disaster-recovery record allows a write (DESIGN §12).

Checked on every PREPARE before anything is held: a DR site that follows a primary takes
no client write (``NotPrimary``); a site just promoted takes only journal replays until
its replay window closes (``ReplayWindow`` for the rest, which the library retries), and
no replay after it (``ReplayRefused``).  A primary without a DR record, the common case,
costs one attribute lookup.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from dds.errors import NotPrimary, ReplayRefused, ReplayWindow

from dds.bricks.mapstate import MapState


class DRGate:
    def __init__(self, maps: MapState, clock: IReactorTime) -> None:
        self.maps = maps
        self.clock = clock

    def check_write(self, op: str) -> None:
        rec = self.maps.map.dr
        if rec is None:
            if op == "replay":
                raise ReplayRefused("replay refused: this cluster was not promoted from a "
                                    "primary (no DR record)",
                                    {"version": None, "reason": "not_promoted"})
            return
        if rec.mode == "follower":
            raise NotPrimary(f"this cluster is the DR site of {rec.primary!r}: writes go "
                             "to the primary until `dds-admin dr promote`")
        if not rec.promoted:
            if op == "replay":
                raise ReplayRefused("replay refused: this cluster is a primary, not a "
                                    "promoted DR site",
                                    {"version": None, "reason": "not_promoted"})
            return
        window_open = self.clock.seconds() * 1000.0 < rec.replay_until_ms
        if op == "replay" and not window_open:
            raise ReplayRefused(f"replay refused: the replay window of epoch {rec.epoch} "
                                "closed", {"version": None, "reason": "window_closed"})
        if op != "replay" and window_open:
            wait_ms = int(rec.replay_until_ms - self.clock.seconds() * 1000.0)
            raise ReplayWindow(f"this site was promoted (epoch {rec.epoch}) and takes only "
                               f"journal replays for another {wait_ms} ms",
                               {"until_ms": rec.replay_until_ms})


__all__ = ["DRGate"]
