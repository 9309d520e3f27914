"""Turning per-slot profiles into integer energy over arbitrary intervals.

Profiles expose integer milliwatt-hours per 900-second slot. Power is constant inside a
slot, so a partial slot gets ``floor(slot_mwh * overlap_seconds / 900)``. Everything after
the per-slot rounding is integer arithmetic, hence exact and independent of how an
interval is split or in which order intervals are asked for.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from gridledger_core.profiles.timegrid import SLOT_SECONDS


class SlotProfile(Protocol):
    def slot_energy_mwh(self, first_slot: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(produced, consumed) in integer mWh for ``count`` slots from ``first_slot``."""
        ...


def to_mwh(power_w: np.ndarray) -> np.ndarray:
    """Mean power per slot (W) to integer mWh per slot."""
    return np.rint(np.clip(power_w, 0.0, None) * (SLOT_SECONDS / 3600.0 * 1000.0)).astype(np.int64)


def net_per_slot(produced: np.ndarray, consumed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What a bidirectional meter counts when it nets production and load per slot."""
    surplus = produced - consumed
    return np.maximum(surplus, 0), np.maximum(-surplus, 0)


def prorate(start: int, seconds: int, per_slot: np.ndarray, first_slot: int) -> int:
    """Integer mWh of ``per_slot`` (slots from ``first_slot``) inside [start, start+seconds)."""
    end = start + seconds
    slot_starts = (np.arange(len(per_slot), dtype=np.int64) + first_slot) * SLOT_SECONDS
    overlap = np.minimum(slot_starts + SLOT_SECONDS, end) - np.maximum(slot_starts, start)
    overlap = np.clip(overlap, 0, SLOT_SECONDS)
    return int((per_slot * overlap // SLOT_SECONDS).sum())


def covering_slots(start: int, seconds: int) -> tuple[int, int]:
    """(first_slot, count) of the slots overlapping [start, start + seconds)."""
    if seconds < 0:
        raise ValueError("interval length must not be negative")
    first = start // SLOT_SECONDS
    last = -((-(start + seconds)) // SLOT_SECONDS)  # ceil
    return first, max(last - first, 0)


def interval_mwh(profile: SlotProfile, start: int, seconds: int) -> tuple[int, int, int, int]:
    """(produced, consumed, exported, imported) mWh over [start, start + seconds)."""
    first, count = covering_slots(start, seconds)
    produced, consumed = profile.slot_energy_mwh(first, count)
    exported, imported = net_per_slot(produced, consumed)
    return (
        prorate(start, seconds, produced, first),
        prorate(start, seconds, consumed, first),
        prorate(start, seconds, exported, first),
        prorate(start, seconds, imported, first),
    )


def mwh_to_wh(mwh: int) -> int:
    """Round half up to whole watt-hours."""
    return (mwh + 500) // 1000
