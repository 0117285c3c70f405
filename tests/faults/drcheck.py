"""The DR fault run's checker (``tests/faults/dr.py``), pure: the clients' records, the
DR site's final state and ``dr promote``'s cut-offs in, the findings out.

What must hold (issue 17, the proof of the DR site):

- **No surviving write lost.**  Every write a surviving client saw acknowledged is at
  the DR site at its version (same value) or superseded by a later version of its key.
- **No version goes back.**  A write acknowledged by the promoted site gets a version
  above every version acknowledged by the primary to a surviving client for that key
  (replays come first); with the first rule, a key's final version is at least every
  version acknowledged to a surviving client.
- **Losses only where promote said.**  A write missing at the DR site belongs to a
  killed client and was acknowledged after the cut-off ``dr promote`` reported for its
  primary partition (the count of those is the measured loss window).

A key the promoted site wrote again (a write that found the primary gone is made again
at the DR site by the library) can only be checked by version: a final version above a
write's counts as superseding it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

#: A key at the DR site: (value or None, version).
State = tuple["bytes | None", int]


@attrs.frozen
class Ack:
    """A write acknowledged to a client, at the primary or (after failover) the DR site."""

    client: int
    key: bytes
    version: int
    value: bytes | None
    ms: int
    site: str                   # "primary" or "dr"


@attrs.define
class Findings:
    acked: int = 0
    acked_dr: int = 0
    lost_killed: int = 0
    replayed: int = 0
    refused: int = 0
    violations: list[str] = attrs.field(factory=list)

    def summary(self) -> str:
        return (f"acked={self.acked} acked_dr={self.acked_dr} replayed={self.replayed} "
                f"refused={self.refused} lost_killed={self.lost_killed} "
                f"violations={len(self.violations)}")


def acks_of(client: int, lines: Iterable[Mapping[str, Any]]) -> list[Ack]:
    """A client's ``ack`` records (``dr_client.py``)."""
    out = []
    for r in lines:
        if r.get("t") == "ack":
            value = r.get("value")
            out.append(Ack(client, bytes.fromhex(r["key"]), int(r["version"]),
                           None if value is None else bytes.fromhex(value), int(r["ms"]),
                           str(r["site"])))
    return out


def check(acks: list[Ack], killed: set[int], final: Mapping[bytes, State],
          cutoffs: Mapping[str, int | None], partition_of: Callable[[bytes], str],
          reports: Iterable[Mapping[str, Any]] = ()) -> Findings:
    """The findings of one run (module docstring).  ``final``: the DR site's key →
    (value, version) at the end; ``cutoffs``: ``dr promote``'s per primary partition
    (missing or None: no cut-off known, any loss allowed); ``partition_of``: a key's
    primary partition; ``reports``: the surviving clients' replay reports (counts)."""
    f = Findings()
    for r in reports:
        f.replayed += int(r.get("applied", 0))
        f.refused += int(r.get("refused_newer", 0)) + int(r.get("refused_window_closed", 0))
    survivors_top: dict[bytes, int] = {}
    for a in acks:
        if a.site == "primary" and a.client not in killed:
            survivors_top[a.key] = max(survivors_top.get(a.key, 0), a.version)
    for a in acks:
        if a.site == "dr":
            f.acked_dr += 1
            top = survivors_top.get(a.key, 0)
            if a.version <= top:
                f.violations.append(
                    f"{a.key!r} v{a.version} acknowledged by the DR site to client "
                    f"{a.client}, not above v{top} the primary acknowledged to a "
                    "surviving client: a version went back")
            continue
        f.acked += 1
        value, version = final.get(a.key, (None, 0))
        present = version > a.version or (version == a.version and value == a.value)
        if present:
            continue
        if a.client not in killed:
            f.violations.append(
                f"{a.key!r} v{a.version} acknowledged to surviving client {a.client} is "
                f"not at the DR site (it holds v{version})")
            continue
        pid = partition_of(a.key)
        cut = cutoffs.get(pid)
        if cut is not None and a.ms < cut:
            f.violations.append(
                f"{a.key!r} v{a.version} of killed client {a.client}, acknowledged at "
                f"{a.ms} before the cut-off {cut} of {pid}, is missing at the DR site")
            continue
        f.lost_killed += 1
    return f


__all__ = ["Ack", "Findings", "acks_of", "check"]
