"""The DR tags of the partitions this primary brick serves (DESIGN §12).

The DR follower reads a partition's change stream with ``DrRead``, which also names the
last position whose rows the DR site has durably applied (made by brick ``applied_by``).
That position's safe time is the partition's **tag**: the DR site holds every write
committed at ``applied_by`` before it.  The tag rides on every YES vote for the
partition, with the time the vote was recorded, so that the library can drop the writes
the DR site holds from its journal (``lib/drjournal.py``); ``DrTags`` answers a library
that has no write to learn a newer tag from.

Tags live in memory: after a restart a brick has none until the follower's next read,
and the library keeps its entries meanwhile (it never drops one without a tag).  They
belong to the DR site they were reported for: once the DR record names another site (a
new ``dr attach``), the old ones are dropped, for that site holds none of it; a
``dr detach`` keeps them (``dr_tags`` still answers what the site holds).
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
from twisted.internet.interfaces import IReactorTime

from dds.changepos import decode
from dds.drmsgs import DrTags
from dds.errors import InvalidRequest
from dds.messages import Message
from dds.partition import PartitionId

from dds.bricks.mapstate import MapState

#: At most this many partitions' tags are kept (a forged stream of made-up partition ids
#: must not grow the table without end; a brick serves far fewer).
MAX_TAGS = 65536


@attrs.frozen
class Tag:
    maker: str
    safe_ms: int
    position: str

    def wire(self) -> list[Any]:
        return [self.maker, self.safe_ms]


class DrTagStore:
    def __init__(self, maps: MapState, clock: IReactorTime) -> None:
        self.maps = maps
        self.clock = clock
        self.tags: dict[str, Tag] = {}
        #: The DR site (the DR record's ``site``) the tags were reported for.
        self.site = ""

    def handlers(self) -> dict[type[Message], Callable[[Any], Any]]:
        return {DrTags: self.read}

    def attached(self) -> bool:
        """A DR site follows this cluster: votes carry ``at`` (and the tag)."""
        rec = self.maps.map.dr
        return rec is not None and rec.attached

    def _current(self) -> dict[str, Tag]:
        """The tags, emptied first if the DR record names another site than theirs (a
        detached primary keeps them: they still say what that site holds)."""
        rec = self.maps.map.dr
        site = rec.site if rec is not None else ""
        if site and site != self.site:
            self.tags = {}
            self.site = site
        return self.tags

    def record(self, pid: PartitionId, applied: str, applied_by: str) -> None:
        """The follower says the DR site holds ``applied`` (a position of ``pid``'s
        stream, made by ``applied_by``).  A tag never goes back for the same maker: a
        follower that resumes from an older checkpoint does not undo what was reported."""
        if not applied:
            return
        pos = decode(applied)
        if pos.pid != pid:
            raise InvalidRequest(f"dr_read: the applied position is one of {pos.pid}, "
                                 f"not of {pid}")
        if not applied_by:
            raise InvalidRequest("dr_read: an applied position needs applied_by (the "
                                 "brick that made it)")
        text = str(pid)
        safe_ms = int(pos.safe_time * 1000)
        old = self._current().get(text)
        if old is not None and old.maker == applied_by and old.safe_ms >= safe_ms:
            return
        if old is None and len(self.tags) >= MAX_TAGS:
            return
        self.tags[text] = Tag(applied_by, safe_ms, applied)

    def tag(self, pid_text: str) -> list[Any] | None:
        t = self._current().get(pid_text)
        return None if t is None else t.wire()

    def read(self, msg: DrTags) -> dict[str, Any]:
        tags = self._current()
        wanted = msg.pids or tuple(tags)
        return {"tags": {p: [t.maker, t.safe_ms, t.position] for p in wanted
                         if (t := tags.get(p)) is not None},
                "now_ms": int(self.clock.seconds() * 1000)}

    def forget(self, pid_text: str) -> None:
        """The partition left this brick (moved, split, merged)."""
        self.tags.pop(pid_text, None)


__all__ = ["DrTagStore", "MAX_TAGS", "Tag"]
