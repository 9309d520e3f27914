"""Which orderer the endorser's broadcaster tries first, and in what order after it.

The lead gets the groups (and forwards them to its peers) while it keeps answering in time:
the last orderer to acknowledge in time that has no recent strikes (or fewer than the lead).
Every orderer is still tried for every group, but one that fails a call, answers wrongly,
refuses a transaction for any reason but a full pool, or answers later than the
broadcaster's `late_after` (250 ms) gets a strike: the lead passes to the next orderer
round the ring without recent strikes (failing that, the one with the fewest), and the
struck one is tried after the others for a cool-down that doubles with each strike (1 s,
2 s, ... at most 60 s). Strikes are forgotten only after a clean minute following the last
cool-down; until then an answer in time does not give the lead back. Saying in time that
its pool is full is no strike. Orderers another sender's call is at come after all the
others: a group leaves alongside only when that call is out too long already.

An orderer of another member may be hostile. One that answers just inside the call's
timeout, or holds calls until it, delays the group it holds; then it no longer leads, is
not handed the lead while a clean orderer exists, and gets groups first only when every
orderer ahead of it is failing, cooling or busy, for cool-downs that grow to a minute. While
it leads it can add up to `late_after` to each group. Every orderer is tried for every
group, so with two orderers the struck one is still next in line, and first while the
other cools down or is busy. An honest orderer in a stall loses the lead at no cost, since
every orderer forwards what it takes.

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

    def clean(self, index: int) -> bool:
        """Whether `index` has no recent strikes and is not cooling down: only such an
        orderer's word counts as evidence against another (ack_watch.py)."""
        self._forget_old_strikes(index)
        return not self._strikes[index] and self._cool_until[index] <= self._clock()

    def cooling(self, index: int) -> bool:
        """Whether `index` is still in its cool-down."""
        return self._cool_until[index] > self._clock()

    def in_time(self, index: int) -> None:
        """`index` acknowledged transactions in time: it leads if it has no recent strikes
        (an answer in time between late ones must not win the lead back at once), or fewer
        than the lead has."""
        self._forget_old_strikes(index)
        self._forget_old_strikes(self.lead)
        if not self._strikes[index] or self._strikes[index] < self._strikes[self.lead]:
            self.lead = index

    def strike(self, index: int) -> float:
        """`index` failed a call or answered late: it cools down, for longer with each strike
        until a clean spell of COOLDOWN_MAX after its last cool-down; it loses the lead to
        the next orderer. Returns the cool-down in seconds."""
        self._forget_old_strikes(index)
        self._strikes[index] += 1
        seconds = min(COOLDOWN_MAX, COOLDOWN_FIRST * 2 ** min(self._strikes[index] - 1, 16))
        self._cool_until[index] = self._clock() + seconds
        if self.lead == index:
            self.lead = self._successor(index)
        return seconds

    def _successor(self, index: int) -> int:
        """Who leads after `index` is struck: the next orderer round the ring with no recent
        strikes and not cooling down; failing that, the one with the fewest strikes, then
        the soonest recovered (never one merely because it comes next)."""
        now = self._clock()
        others = [(index + k) % self._count for k in range(1, self._count)]
        for i in others:
            self._forget_old_strikes(i)
        clean = [i for i in others if not self._strikes[i] and self._cool_until[i] <= now]
        if clean:
            return clean[0]
        return min(others, key=lambda i: (self._strikes[i], self._cool_until[i]), default=index)

    def _forget_old_strikes(self, index: int) -> None:
        if self._clock() - self._cool_until[index] > COOLDOWN_MAX:
            self._strikes[index] = 0
