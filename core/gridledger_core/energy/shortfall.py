"""Shortfall windows from measured readings, for plants without a simulated profile (a
Modbus-metered plant announces what its own committed readings show)."""

from __future__ import annotations

from collections.abc import Iterable


def windows_from_readings(readings: Iterable[tuple[int, int, int]], threshold_w: int,
                          supply_hours_utc: tuple[int, int]) -> list[tuple[int, int]]:
    """Maximal runs of intervals inside the supply hours (UTC) whose mean power was below
    `threshold_w`. `readings` are (interval_start, interval_seconds, produced_wh), oldest
    first."""
    first_hour, last_hour = supply_hours_utc
    windows: list[tuple[int, int]] = []
    for start, seconds, produced_wh in readings:
        hour = start % 86_400 // 3600
        if not first_hour <= hour < last_hour:
            continue
        if produced_wh * 3600 // seconds >= threshold_w:
            continue
        end = start + seconds
        if windows and windows[-1][1] >= start:
            windows[-1] = (windows[-1][0], end)
        else:
            windows.append((start, end))
    return windows
