"""Replaying the client journal at a promoted DR site (DESIGN §12), and what came of it.

Each entry goes to the DR site as ``Prepare(op="replay", expected_version=entry.version,
value=entry.value)`` (``None`` for a removal) through the normal 2PC of a ``DDSClient``
connected to the site: exclusions, map repairs and retries as for any write.  Every
member votes YES only if its copy of the key is older than the entry's version, so a
replay never overwrites a newer write and replaying twice changes nothing.  An entry
leaves the journal once applied or refused (the report keeps it); one that failed
otherwise (the site unreachable, a timeout) stays for the next ``dr_replay``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import DeferredSemaphore

from dds.deferreds import gather
from dds.errors import DDSError, ReplayRefused

from dds.lib.drjournal import DrJournal, Entry

if TYPE_CHECKING:
    from dds.lib.client import DDSClient

#: Replays in flight at once.
REPLAY_CONCURRENCY = 32

#: ``(key, version)`` of one replayed entry.
Item = tuple[bytes, int]


@attrs.frozen
class ReplayReport:
    """What ``dr_replay`` did with each journal entry: ``applied`` (the DR site took the
    write at its version), ``refused_newer`` (the site holds that version of the key or a
    newer one), ``refused_window_closed`` (the replay window had closed: the write may be
    lost unless the site holds it), ``failed`` (another error: ``errors`` says which; the
    entry stays in the journal)."""

    applied: tuple[Item, ...] = ()
    refused_newer: tuple[Item, ...] = ()
    refused_window_closed: tuple[Item, ...] = ()
    failed: tuple[Item, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return (len(self.applied) + len(self.refused_newer)
                + len(self.refused_window_closed) + len(self.failed))

    def to_dict(self) -> dict[str, Any]:
        """Counts and the keys (hex) and versions of each outcome."""
        def items(xs: tuple[Item, ...]) -> list[list[Any]]:
            return [[k.hex(), v] for k, v in xs]
        return {"applied": items(self.applied), "refused_newer": items(self.refused_newer),
                "refused_window_closed": items(self.refused_window_closed),
                "failed": items(self.failed), "errors": list(self.errors)}

    def summary(self) -> str:
        return (f"applied={len(self.applied)} refused_newer={len(self.refused_newer)} "
                f"refused_window_closed={len(self.refused_window_closed)} "
                f"failed={len(self.failed)}")


#: The outcome names (``dds_client_dr_replays_total{outcome}``).
OUTCOMES = ("applied", "refused_newer", "refused_window_closed", "failed")


def outcome_of(result: Any) -> tuple[str, str | None]:
    """An entry's outcome from its replay's result (a version or an exception), and the
    error text of a failure."""
    if not isinstance(result, BaseException):
        return "applied", None
    if isinstance(result, ReplayRefused):
        reason = result.data.get("reason") if isinstance(result.data, dict) else None
        if reason == "newer":
            return "refused_newer", None
        if reason == "window_closed":
            return "refused_window_closed", None
    text = result.message if isinstance(result, DDSError) else repr(result)
    return "failed", f"{type(result).__name__}: {text}"


async def replay(site: DDSClient, journal: DrJournal, timeout: float) -> ReplayReport:
    """Replay every entry of ``journal`` at ``site`` (a client of the promoted site)."""
    entries = list(journal)
    limit = DeferredSemaphore(REPLAY_CONCURRENCY)

    def one(e: Entry) -> Any:
        value = None if e.op == "remove" else e.value
        return site.replay_write(e.key, value, e.version, timeout)
    results = await gather(limit.run(one, e) for e in entries)
    out: dict[str, list[Item]] = {name: [] for name in OUTCOMES}
    errors: list[str] = []
    done: list[Entry] = []
    for e, result in zip(entries, results):
        name, error = outcome_of(result)
        out[name].append((e.key, e.version))
        site.metrics.inc("dr_replays", outcome=name)
        if error is not None:
            if len(errors) < 100:
                errors.append(f"{e.key[:64]!r} v{e.version}: {error}")
        else:
            done.append(e)
    journal.remove(done)
    return ReplayReport(tuple(out["applied"]), tuple(out["refused_newer"]),
                        tuple(out["refused_window_closed"]), tuple(out["failed"]),
                        tuple(errors))


__all__ = ["OUTCOMES", "REPLAY_CONCURRENCY", "ReplayReport", "outcome_of", "replay"]
