"""Reliability score of a plant from its announced shortfall windows.

A plant announces the windows ``[start, end)`` (Unix seconds) in which its supply fell
below its configured threshold. Every node must compute the same score from the same
windows, so the score is an integer in basis points and uses integer arithmetic only.

Definition. Parameters: horizon ``H`` seconds, bucket length ``B`` seconds (``H`` a
multiple of ``B``), retention ``r`` in parts per million. At time ``now``:

1. Shortfall time ``S`` is the union of the windows, each clipped to the horizon
   ``[now - H, now)``. Overlapping or repeated windows count once; windows in the future
   and windows with ``end <= start`` after clipping contribute nothing.
2. The horizon is cut into ``N = H / B`` buckets by age: bucket ``k`` (``0 <= k < N``)
   is ``[now - (k + 1) B, now - k B)``; bucket 0 is the most recent.
3. Bucket weights decay with age: ``w_0 = 2**40`` and
   ``w_(k+1) = floor(w_k * r / 1_000_000)``.
4. ``o_k`` is the number of seconds of ``S`` inside bucket ``k``.
   ``D = sum_k w_k * o_k`` (weighted shortfall) and ``T = sum_k w_k * B`` (weighted
   horizon), so ``0 <= D <= T``.
5. ``reliability_bp = floor(10_000 * (T - D) / T)``.

So the score is 10 000 for a plant with no shortfall in the horizon and 0 for one that
was short the whole horizon. It is lower for more shortfalls and for longer ones (``S``
grows, so ``D`` grows) and for more recent ones (the weights never grow with age, so
moving shortfall time towards ``now`` never lowers ``D``). With the defaults (30-day
horizon, hourly buckets, r = 995 882 ppm, i.e. 2**(-1/168)) a shortfall's weight
halves every 7 days: an hour short yesterday costs 40 bp, the same hour a week earlier
20 bp; a whole day short yesterday costs 994 bp, eight days ago 497 bp. Shortfalls older
than the horizon are forgotten.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

BASIS_POINTS = 10_000
_W0 = 1 << 40
_PPM = 1_000_000


@dataclass(frozen=True)
class ReliabilityParams:
    horizon_s: int = 30 * 86_400
    bucket_s: int = 3_600
    retention_ppm: int = 995_882

    def __post_init__(self) -> None:
        if self.bucket_s <= 0 or self.horizon_s <= 0 or self.horizon_s % self.bucket_s:
            raise ValueError("horizon_s must be a positive multiple of a positive bucket_s")
        if not 0 < self.retention_ppm <= _PPM:
            raise ValueError("retention_ppm must be within 1 ... 1_000_000")
        if self.horizon_s // self.bucket_s > 100_000:
            raise ValueError("too many buckets")


DEFAULT_PARAMS = ReliabilityParams()


@lru_cache(maxsize=16)
def bucket_weights(params: ReliabilityParams) -> tuple[int, ...]:
    weights = [_W0]
    for _ in range(params.horizon_s // params.bucket_s - 1):
        weights.append(weights[-1] * params.retention_ppm // _PPM)
    return tuple(weights)


def _check_int(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int (Unix seconds), got {type(value).__name__}")
    return value


def shortfall_union(
    windows: Iterable[tuple[int, int]], now: int, horizon_s: int
) -> list[tuple[int, int]]:
    """The windows clipped to [now - horizon_s, now) and merged, oldest first."""
    _check_int(now, "now")
    lo = now - horizon_s
    clipped = []
    for window in windows:
        start, end = (_check_int(v, "window bound") for v in window)
        if end < start:
            raise ValueError(f"shortfall window ends before it starts: ({start}, {end})")
        start, end = max(start, lo), min(end, now)
        if start < end:
            clipped.append((start, end))
    merged: list[tuple[int, int]] = []
    for start, end in sorted(clipped):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def reliability_bp(
    windows: Iterable[tuple[int, int]], now: int, params: ReliabilityParams = DEFAULT_PARAMS
) -> int:
    """Reliability in basis points [0, 10000] (see the module docstring)."""
    weights = bucket_weights(params)
    bucket = params.bucket_s
    weighted_shortfall = 0
    for start, end in shortfall_union(windows, now, params.horizon_s):
        # Buckets (by age) that [start, end) touches: from the one holding end - 1 back
        # to the one holding start.
        for k in range((now - end) // bucket, (now - start - 1) // bucket + 1):
            overlap = min(end, now - k * bucket) - max(start, now - (k + 1) * bucket)
            if overlap > 0:
                weighted_shortfall += weights[k] * overlap
    weighted_horizon = sum(weights) * bucket
    return BASIS_POINTS * (weighted_horizon - weighted_shortfall) // weighted_horizon


def shortfall_seconds(windows: Iterable[tuple[int, int]], now: int, horizon_s: int) -> int:
    """Unweighted shortfall time in the horizon (for explanations)."""
    return sum(end - start for start, end in shortfall_union(windows, now, horizon_s))
