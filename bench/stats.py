"""Percentiles the way every benchmark here reports them (nearest rank, no interpolation)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[index]


def summary_ms(values: Sequence[float]) -> dict[str, float]:
    return {f"p{p}_ms": round(percentile(values, p) * 1000, 2) for p in (50, 95, 99)} | {
        "max_ms": round(max(values) * 1000, 2) if values else float("nan")}
