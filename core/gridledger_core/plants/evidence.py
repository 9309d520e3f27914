"""Shortfall windows from evidence (issue 14): what a plant's own committed live readings show,
not what it declares.

An interval of a plant's live reading is a *shortfall interval* when its mean power was below
the plant's announced threshold, i.e. ``produced_wh * 3600 < threshold_w * interval_s``
(integers, exact). Adjacent shortfall intervals merge into one window. A gap between the end
of the plant's latest reading and the start of the next one is a shortfall too (no evidence of
supply), and so is the time since its latest reading beyond the readings submission window
(a plant that stops reporting does not keep its score). Self-declared windows are added to
these, never subtract from them. A plant with no live reading has no score at all.

Windows are kept inside the reliability horizon and at most `MAX_MEASURED_WINDOWS` of them:
beyond that the two windows with the smallest gap between them merge (the earliest pair on a
tie), which only ever adds shortfall time, so bounding the record never favours the plant.
"""

from __future__ import annotations

from collections.abc import Iterable

from gridledger_core.plants.reliability import (
    DEFAULT_PARAMS,
    ReliabilityParams,
    reliability_bp,
    shortfall_union,
)

MAX_MEASURED_WINDOWS = 1000

Window = tuple[int, int]


def is_shortfall(produced_wh: int, threshold_w: int, interval_s: int) -> bool:
    """True if the interval's mean power (produced_wh * 3600 / interval_s) < threshold_w."""
    return produced_wh * 3600 < threshold_w * interval_s


def _bounded(windows: list[Window], max_windows: int) -> list[Window]:
    while len(windows) > max_windows:
        gaps = [windows[i + 1][0] - windows[i][1] for i in range(len(windows) - 1)]
        i = gaps.index(min(gaps))  # first (earliest) smallest gap
        windows = [*windows[:i], (windows[i][0], windows[i + 1][1]), *windows[i + 2:]]
    return windows


def add_windows(known: Iterable[Window], new: Iterable[Window], now: int,
                horizon_s: int = DEFAULT_PARAMS.horizon_s,
                max_windows: int = MAX_MEASURED_WINDOWS) -> list[Window]:
    """`known` plus `new`, clipped to [now - horizon, now), merged (touching windows join),
    at most `max_windows` (see the module docstring)."""
    return _bounded(shortfall_union([*known, *new], now, horizon_s), max_windows)


def reading_windows(interval_start: int, interval_s: int, produced_wh: int, threshold_w: int,
                    last_reading_end: int) -> list[Window]:
    """The shortfall windows one live plant reading adds: its interval if below the threshold,
    and the gap since the previous reading's end (if any, and if this reading is later)."""
    windows: list[Window] = []
    if 0 < last_reading_end < interval_start:
        windows.append((last_reading_end, interval_start))
    if is_shortfall(produced_wh, threshold_w, interval_s):
        windows.append((interval_start, interval_start + interval_s))
    return windows


def scoring_windows(declared: Iterable[Window], measured: Iterable[Window], live_readings: int,
                    last_reading_end: int, now: int, submission_window_s: int,
                    ) -> list[Window] | None:
    """Every shortfall window the score counts at `now`, or None for a plant without live
    readings (unscored)."""
    if live_readings == 0:
        return None
    windows = [*declared, *measured]
    silent_from = last_reading_end + submission_window_s
    if silent_from < now:
        windows.append((silent_from, now))
    return windows


def evidence_reliability_bp(declared: Iterable[Window], measured: Iterable[Window],
                            live_readings: int, last_reading_end: int, now: int,
                            submission_window_s: int,
                            params: ReliabilityParams = DEFAULT_PARAMS) -> int | None:
    """The documented score (reliability.py) over the windows of `scoring_windows`; None when
    the plant has no live reading."""
    windows = scoring_windows(declared, measured, live_readings, last_reading_end, now,
                              submission_window_s)
    return None if windows is None else reliability_bp(windows, now, params)


def record_reliability_bp(record: object, now: int, submission_window_s: int,
                          params: ReliabilityParams = DEFAULT_PARAMS) -> int | None:
    """`evidence_reliability_bp` of a PlantRecord (declared and measured windows, readings)."""
    return evidence_reliability_bp(
        [(w.start, w.end) for w in record.shortfall_windows],  # type: ignore[attr-defined]
        [(w.start, w.end) for w in record.measured_shortfall_windows],  # type: ignore[attr-defined]
        record.live_readings, record.last_reading_end,  # type: ignore[attr-defined]
        now, submission_window_s, params)
