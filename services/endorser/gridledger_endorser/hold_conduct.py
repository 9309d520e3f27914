"""How each member's options ended recently: energy traded against energy let lapse.

An option holds resting energy until its place_order reaches a block or it expires. A member
whose options lapse (expire without a valid place_order) more than they
trade holds energy without trading it; book_cache.py then holds it to its share of a slot.
Only trades count for it: a trade cannot be taken back, where a resting order can be
cancelled in the next block. Counted per member (organisation) over a sliding window of
``WINDOW_SECONDS`` in ``BUCKET_SECONDS`` buckets, so memory is members x buckets whatever the
rate of options.

An option made void by another member (its cancel, or its fill through another endorser,
of a maker the option trades with) is not its holder's fault, and costs it nothing; but
when the option also held other makers' energy, only ``FREE_VOIDS`` times per window: two
colluding members could otherwise hold a slot's energy for ever uncharged (one rests a tiny
ask, the other's option takes it with everyone else's energy, the first cancels it just
before the option expires). An honest member rarely sees that many voids; when it does, the
excess counts as lapsed, which puts it in bad standing only if it let more lapse than it
traded.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

WINDOW_SECONDS = 600
BUCKET_SECONDS = 60
FREE_VOIDS = 3  # options per member per window that others may void without a charge


@dataclass
class _Bucket:
    start: int
    traded_wh: int = 0
    lapsed_wh: int = 0
    voids: int = 0  # options of the member made void by others


class HoldConduct:
    """Wh each member's options traded (their place_order valid in its block) and let lapse
    (expired without a valid place_order) within the last window.
    Not thread-safe: the book cache's lock guards it."""

    def __init__(self, window: int = WINDOW_SECONDS, bucket: int = BUCKET_SECONDS) -> None:
        self._window = window
        self._bucket = bucket
        self._members: dict[str, deque[_Bucket]] = {}

    def traded(self, member: str, wh: int, now: int) -> None:
        self._current(member, now).traded_wh += wh

    def lapsed(self, member: str, wh: int, now: int) -> None:
        self._current(member, now).lapsed_wh += wh

    def void_is_free(self, member: str, now: int) -> bool:
        """Another member voided one of `member`'s options: True while that has happened at
        most FREE_VOIDS times in the window (uncharged), else False (charge it as lapsed)."""
        self._current(member, now).voids += 1
        return sum(b.voids for b in self._members[member]) <= FREE_VOIDS

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
