"""A meter's production/consumption forecast for one delivery slot (seed 000, claim 2).

Pure, deterministic and integer-only, so every endorser and every auditor computes the same
number from the same on-chain readings.

Method ("same time of day over the last N days, weighted"):

1. For each day ``d = 1 .. window_days`` back, the *span* is the slot shifted back by
   ``d * 86,400`` seconds: ``[slot_start - d*86400, slot_start - d*86400 + slot_seconds)``.
   Days are UTC days of exactly 86,400 s (no time zones or DST in the ledger's rules).
2. A day's energy is the sum of the readings in its span. A reading that straddles a span
   edge contributes ``energy * overlap_seconds // interval_seconds`` (floor: the pro-rated
   share, rounded down, at most 1 Wh lost per straddling reading).
3. A day is *present* only if its readings cover the whole span; days with missing or
   partial data are left out and the weights are renormalised over the days present.
4. Forecast = weighted mean of the present days' energies, rounded half up:
   ``(2 * sum(w_d * e_d) + W) // (2 * W)`` with ``W = sum(w_d)``. Since every ``e_d`` is an
   integer, the result lies between the smallest and largest day energy.
5. No day present: the forecast is 0 and ``has_history`` is False.

Weights (``d`` = days back, 1 = most recent): UNIFORM 1; LINEAR ``N + 1 - d`` (the most recent
day weighs N, the oldest 1); EXPONENTIAL ``2 ** (N - d)`` (halving per day back).

``net_wh = produced_wh - consumed_wh``: positive is a surplus the meter may sell, negative a
deficit it may buy. Readings are expected not to overlap each other (one meter reports each
interval once; the ledger enforces it); coverage beyond the span is reported as an error.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

DAY_SECONDS = 86_400


class Weighting(enum.Enum):
    UNIFORM = "uniform"
    LINEAR = "linear"
    EXPONENTIAL = "exponential"


@dataclass(frozen=True, slots=True)
class ForecastParams:
    window_days: int = 7
    weighting: Weighting = Weighting.LINEAR

    def __post_init__(self) -> None:
        if not 1 <= self.window_days <= 366:
            raise ValueError(f"window_days must be within 1..366, got {self.window_days}")

    def weight(self, days_back: int) -> int:
        n = self.window_days
        if self.weighting is Weighting.LINEAR:
            return n + 1 - days_back
        if self.weighting is Weighting.EXPONENTIAL:
            return 1 << (n - days_back)
        return 1


class ReadingLike(Protocol):
    """What the forecaster needs of a meter reading (the ledger's own record type fits)."""

    @property
    def interval_start(self) -> int: ...  # unix seconds
    @property
    def interval_seconds(self) -> int: ...
    @property
    def produced_wh(self) -> int: ...
    @property
    def consumed_wh(self) -> int: ...


class Reading(NamedTuple):
    interval_start: int
    interval_seconds: int
    produced_wh: int
    consumed_wh: int


class DaySample(NamedTuple):
    """One present day of the window: its energies in the span and its weight."""

    days_back: int
    weight: int
    produced_wh: int
    consumed_wh: int


class Forecast(NamedTuple):
    produced_wh: int
    consumed_wh: int
    days: tuple[DaySample, ...]  # the days used, most recent first

    @property
    def net_wh(self) -> int:
        """Surplus (> 0, may sell) or deficit (< 0, may buy) for the slot."""
        return self.produced_wh - self.consumed_wh

    @property
    def has_history(self) -> bool:
        return bool(self.days)


DEFAULT_PARAMS = ForecastParams()


def history_window(
    slot_start: int, slot_seconds: int, params: ForecastParams = DEFAULT_PARAMS
) -> tuple[int, int]:
    """``[start, end)`` of the readings the forecast of this slot can use (for fetching)."""
    return slot_start - params.window_days * DAY_SECONDS, slot_start - DAY_SECONDS + slot_seconds


def forecast(
    readings: Iterable[ReadingLike],
    slot_start: int,
    slot_seconds: int,
    params: ForecastParams = DEFAULT_PARAMS,
    *,
    as_of: int | None = None,
) -> Forecast:
    """Forecast the meter's production and consumption in ``[slot_start, +slot_seconds)``.

    ``as_of`` (unix seconds), if given, ignores readings whose interval ends after it, so an
    auditor can recompute the number an endorser got at admission time.
    """
    if not 0 < slot_seconds <= DAY_SECONDS:
        raise ValueError(f"slot_seconds must be within 1..86400, got {slot_seconds}")
    n = params.window_days
    covered = [0] * (n + 1)
    produced = [0] * (n + 1)
    consumed = [0] * (n + 1)
    for r in readings:
        start, length = r.interval_start, r.interval_seconds
        if length <= 0:
            raise ValueError(f"reading at {start} has non-positive length {length}")
        if r.produced_wh < 0 or r.consumed_wh < 0:
            raise ValueError(f"reading at {start} has negative energy")
        end = start + length
        if as_of is not None and end > as_of:
            continue
        # Days d whose span [slot_start - d*DAY, +slot_seconds) overlaps [start, end).
        first = max(1, (slot_start - end) // DAY_SECONDS + 1)
        last = min(n, -((start - slot_start - slot_seconds) // DAY_SECONDS) - 1)
        for d in range(first, last + 1):
            span_start = slot_start - d * DAY_SECONDS
            overlap = min(end, span_start + slot_seconds) - max(start, span_start)
            if overlap <= 0:
                continue
            covered[d] += overlap
            if overlap == length:
                produced[d] += r.produced_wh
                consumed[d] += r.consumed_wh
            else:
                produced[d] += r.produced_wh * overlap // length
                consumed[d] += r.consumed_wh * overlap // length

    days: list[DaySample] = []
    for d in range(1, n + 1):
        if covered[d] > slot_seconds:
            raise ValueError(f"readings overlap each other on day -{d} of slot {slot_start}")
        if covered[d] == slot_seconds:
            days.append(DaySample(d, params.weight(d), produced[d], consumed[d]))
    if not days:
        return Forecast(0, 0, ())
    total = sum(s.weight for s in days)
    return Forecast(
        _mean_half_up(sum(s.weight * s.produced_wh for s in days), total),
        _mean_half_up(sum(s.weight * s.consumed_wh for s in days), total),
        tuple(days),
    )


def net_forecast(
    readings: Iterable[ReadingLike],
    slot_start: int,
    slot_seconds: int,
    params: ForecastParams = DEFAULT_PARAMS,
    *,
    as_of: int | None = None,
) -> int:
    """``forecast(...).net_wh``: surplus (> 0) or deficit (< 0) in Wh."""
    return forecast(readings, slot_start, slot_seconds, params, as_of=as_of).net_wh


def _mean_half_up(weighted_sum: int, total_weight: int) -> int:
    return (2 * weighted_sum + total_weight) // (2 * total_weight)
