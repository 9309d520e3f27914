"""Which orderer the endorser's broadcaster tries first, and in what order after it.

The orderer that last acknowledged transactions in time leads: it gets the groups (and
forwards them to its peers) while it keeps answering in time. Every orderer is still tried
for every group, but one that just failed a call (an error, the timeout, a malformed answer)
or acknowledged later than `late_after` (the broadcaster's; 250 ms) is put after the others
for a cool-down that doubles with each strike in a row (1 s, 2 s, ... at most 60 s); an
answer in time that acknowledges something ends the row, and so does a clean minute after
the last cool-down. An answer in time that refuses each transaction on its own (a full
pool) is no strike. Orderers another sender's call is at come after all the others: a group
leaves alongside only when that call is out too long already.

An orderer of another member may be hostile. One that answers OK just inside the call's
timeout, or holds calls until it, is then tried first again only after its cool-down, and
only if it answers a group in time; so it delays about one group per cool-down instead of
every group of the endorser. While it leads it can still add up to `late_after` to each
group. An honest orderer in a stall loses the lead at no cost, since every orderer forwards
what it takes.

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
        """Every orderer once: those no other call is at (`busy`) first, and among them the
        ready ones from the lead round the ring, then the cooling ones, soonest recovered
        first; then the busy ones in the same order. A group leaves alongside another only
        when that call is out too long already, so it goes anywhere else first."""
        now = self._clock()  # one reading: an orderer recovering meanwhile is still listed
        ring = [(self.lead + k) % self._count for k in range(self._count)]

        def ranked(indices: list[int]) -> list[int]:
            ready = [i for i in indices if self._cool_until[i] <= now]
            cooling = sorted((i for i in indices if self._cool_until[i] > now),
                             key=lambda i: self._cool_until[i])
            return ready + cooling

        return (ranked([i for i in ring if i not in busy])
                + ranked([i for i in ring if i in busy]))

    def cooling(self, index: int) -> bool:
        """Whether `index` is still in its cool-down."""
        return self._cool_until[index] > self._clock()

    def in_time(self, index: int) -> None:
        """`index` acknowledged transactions in time: it leads, its strikes are forgotten."""
        self.lead = index
        self._strikes[index] = 0
        self._cool_until[index] = float("-inf")

    def strike(self, index: int) -> float:
        """`index` failed a call or answered late: it cools down; returns for how long. Strikes
        count in a row: an answer in time ends the row, and so does a clean spell of
        COOLDOWN_MAX after the last cool-down (an orderer that is rarely tried is not
        charged for a stall long past)."""
        now = self._clock()
        if now - self._cool_until[index] > COOLDOWN_MAX:
            self._strikes[index] = 0
        self._strikes[index] += 1
        seconds = min(COOLDOWN_MAX, COOLDOWN_FIRST * 2 ** min(self._strikes[index] - 1, 16))
        self._cool_until[index] = now + seconds
        return seconds
