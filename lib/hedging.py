"""When to hedge a read (DESIGN §3; issue: reads do not leave a paused replica).

A read goes to one replica.  If that replica is paused, overloaded or dead and its
connection not yet known to be lost, the read would wait for its whole deadline.  So
once it has waited longer than almost every read does (the observed 99th percentile of
reads answered by their first replica, at least ``FLOOR_S``), the library sends it to a
second replica too and takes the first valid answer.  The delay is capped at ``CAP_S``:
what a paused replica may cost a read.  Hedged reads are left out of the percentile, or
a paused replica would push the delay up by itself.
"""

from __future__ import annotations

#: Never hedge earlier: a read this fast is normal on any machine.
FLOOR_S = 0.005
#: Never later: the most a slow replica costs a read.
CAP_S = 0.05
#: Latencies kept, and how often the percentile is recomputed.
WINDOW = 512
EVERY = 128


class HedgeDelay:
    """The adaptive delay before a read is hedged."""

    def __init__(self, floor: float = FLOOR_S, cap: float = CAP_S) -> None:
        self.floor = floor
        self.cap = cap
        self._samples: list[float] = []
        self._next = 0
        self._seen = 0
        self._delay = cap          # until enough reads were seen: the cap

    def delay(self) -> float:
        return self._delay

    def observe(self, seconds: float) -> None:
        """A read answered by its first replica took ``seconds``."""
        if len(self._samples) < WINDOW:
            self._samples.append(seconds)
        else:
            self._samples[self._next] = seconds
            self._next = (self._next + 1) % WINDOW
        self._seen += 1
        if self._seen % EVERY == 0:
            ordered = sorted(self._samples)
            p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            self._delay = min(self.cap, max(self.floor, p99))
