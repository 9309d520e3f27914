"""Which orderer the endorser's broadcaster tries first, and in what order after it.

The orderer that last acknowledged transactions in time leads: it gets the groups (and
forwards them to its peers) while it keeps answering in time. Every orderer is still tried
for every group, but an orderer that just failed a call (an error, a timeout, or nothing
acknowledged) or answered later than `late_after` is put after the others for a cool-down
that doubles with each strike in a row (1 s, 2 s, ... at most 60 s) and ends with its next
answer in time. An orderer of another member may be hostile: one that answers OK just inside
the call's timeout, or holds calls until it, then delays one group per cool-down instead of
every group (or, once a late answer moved the lead on, every group that reached it again).
An honest orderer in a stall loses the lead at no cost, since every orderer forwards what it
takes. Among orderers whose call another sender has in flight, the others come first, so a
group that leaves alongside a stuck call does not wait behind it.

Pure: the clock is injected; the broadcaster calls it under its own lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

COOLDOWN_FIRST = 1.0  # seconds after a first strike
COOLDOWN_MAX = 60.0


class OrdererChoice:
    def __init__(self, count: int, clock: Callable[[], float] = time.monotonic) -> None:
        if count < 1:
            raise ValueError(f"need at least one orderer, not {count}")
        self.lead = 0
        self._count = count
        self._clock = clock
        self._cool_until = [float("-inf")] * count
        self._strikes = [0] * count

    def order(self, busy: Collection[int] = ()) -> list[int]:
        """Every orderer once: from the lead round the ring, those neither cooling down nor
        `busy` first, then the busy ones, then the cooling ones, soonest recovered first."""
        ring = [(self.lead + k) % self._count for k in range(self._count)]
        ready = [i for i in ring if not self.cooling(i)]
        cooling = sorted((i for i in ring if self.cooling(i)), key=lambda i: self._cool_until[i])
        return ([i for i in ready if i not in busy] + [i for i in ready if i in busy]
                + cooling)

    def cooling(self, index: int) -> bool:
        """Whether `index` is still in its cool-down."""
        return self._cool_until[index] > self._clock()

    def in_time(self, index: int) -> None:
        """`index` acknowledged transactions in time: it leads, its strikes are forgotten."""
        self.lead = index
        self._strikes[index] = 0
        self._cool_until[index] = float("-inf")

    def strike(self, index: int) -> float:
        """`index` failed a call or answered late: it cools down; returns for how long."""
        self._strikes[index] += 1
        seconds = min(COOLDOWN_MAX, COOLDOWN_FIRST * 2 ** min(self._strikes[index] - 1, 16))
        self._cool_until[index] = self._clock() + seconds
        return seconds
