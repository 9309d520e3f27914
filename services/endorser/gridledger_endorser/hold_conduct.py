"""How each member's options ended recently: energy traded against energy let lapse, and
how often other members' doing voided them while they held a third member's energy.

An option holds resting energy until its place_order reaches a block or it expires. A member
whose options lapse (expire without a valid place_order) more than they
trade holds energy without trading it; book_cache.py then holds it to its share of a slot.
Only trades count for it: a trade cannot be taken back, where a resting order can be
cancelled in the next block. A void by another member's doing (its cancel, or its fill through
another endorser) costs the holder nothing, but is counted: members taking turns, one holding
a third member's energy and the others voiding the hold before it lapses, are caught by that
count (book_cache.py charges the holder beyond a budget). Counted per member (organisation)
over a sliding window of ``WINDOW_SECONDS`` in ``BUCKET_SECONDS`` buckets, so memory is
members x buckets whatever the rate of options.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

WINDOW_SECONDS = 600
BUCKET_SECONDS = 60


@dataclass
class _Bucket:
    start: int
    traded_wh: int = 0
    lapsed_wh: int = 0
    voided: int = 0  # its options other members' doing voided (book_cache.py says which)


class HoldConduct:
    """Wh each member's options traded (their place_order valid in its block) and let lapse
    (expired without a valid place_order), and how many of its options other members
    voided, within the last window.
    Not thread-safe: the book cache's lock guards it."""

    def __init__(self, window: int = WINDOW_SECONDS, bucket: int = BUCKET_SECONDS) -> None:
        self._window = window
        self._bucket = bucket
        self._members: dict[str, deque[_Bucket]] = {}

    def traded(self, member: str, wh: int, now: int) -> None:
        self._current(member, now).traded_wh += wh

    def lapsed(self, member: str, wh: int, now: int) -> None:
        self._current(member, now).lapsed_wh += wh

    def voided(self, member: str, now: int) -> int:
        """Count one option of `member` voided by another member's doing; how many were
        within the window, this one included."""
        self._current(member, now).voided += 1
        return sum(b.voided for b in self._members[member])

    def totals(self, member: str, now: int) -> tuple[int, int]:
        """(traded, lapsed) Wh of `member`'s options within the window."""
        buckets = self._members.get(member)
        if buckets is None:
            return 0, 0
        self._forget(member, buckets, now)
        return (sum(b.traded_wh for b in buckets), sum(b.lapsed_wh for b in buckets))

    def _current(self, member: str, now: int) -> _Bucket:
        start = now - now % self._bucket
        buckets = self._members.get(member)
        if buckets is not None:
            self._forget(member, buckets, now)
        buckets = self._members.setdefault(member, deque())
        if not buckets or buckets[-1].start < start:
            buckets.append(_Bucket(start))
        return buckets[-1]

    def _forget(self, member: str, buckets: deque[_Bucket], now: int) -> None:
        while buckets and buckets[0].start + self._bucket <= now - self._window:
            buckets.popleft()
        if not buckets:
            self._members.pop(member, None)
