"""A PV plant: a large array on the typical-year weather plus seeded forced outages.

Outages (inverter trips, grid-side curtailment) are drawn per local day from the seed:
with probability ``outage_probability_per_day`` one outage starts at a uniformly drawn
quarter hour inside the supply hours and lasts an exponentially distributed time with
mean ``mean_outage_hours`` (at least one quarter hour, at most 24 h). During an outage the
plant produces ``outage_derate`` of its normal output.

``wind_kw`` (0 by default) adds a wind park of that mean power (see ``wind``): a hybrid plant
that also supplies at night, which the devnet's demo plants are.

A *shortfall window* is a maximal run of quarter hours inside the supply hours
(``supply_hours``, local standard time) in which the plant's mean power is below a
threshold: outages and heavily overcast days both cause them. These are the windows a
plant announces on-chain (claim 2 of the seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gridledger_core.profiles.energy import covering_slots, interval_mwh, mwh_to_wh, to_mwh
from gridledger_core.profiles.household import pv_power_w
from gridledger_core.profiles.noise import mean_one_lognormal, uniforms
from gridledger_core.profiles.pv import typical_weather
from gridledger_core.profiles.timegrid import (
    DAY_SECONDS,
    SLOT_SECONDS,
    SLOTS_PER_DAY,
    local_days,
    quarter_of_day,
    slot_range,
)
from gridledger_core.profiles.wind import wind_power_w

PLANT_MOUNT = "open_rack_glass_polymer"
_MWH_PER_SLOT_TO_W = 3600.0 / SLOT_SECONDS / 1000.0


@dataclass(frozen=True)
class PlantProfile:
    seed: int
    pv_kwp: float = 500.0
    tilt_deg: float = 25.0
    azimuth_deg: float = 180.0
    outage_probability_per_day: float = 0.08
    mean_outage_hours: float = 3.0
    outage_derate: float = 0.0
    supply_hours: tuple[int, int] = (9, 16)
    pv_sigma: float = 0.05
    wind_kw: float = 0.0

    def __post_init__(self) -> None:
        first, last = self.supply_hours
        if not 0 <= first < last <= 24:
            raise ValueError("supply_hours must be (first, last) with 0 <= first < last <= 24")
        if not 0.0 <= self.outage_probability_per_day <= 1.0:
            raise ValueError("outage_probability_per_day must be within [0, 1]")
        if (min(self.pv_kwp, self.wind_kw) < 0 or self.mean_outage_hours <= 0
                or not 0 <= self.outage_derate <= 1):
            raise ValueError("invalid plant parameters")

    @property
    def utc_offset_s(self) -> int:
        return typical_weather().utc_offset_s

    def _outage_slots(self, day: int) -> tuple[int, int] | None:
        """(first_slot, end_slot) of the outage starting on local day ``day``, if any."""
        index = np.asarray([day], dtype=np.int64)
        if uniforms(self.seed, "outage/occurs", index)[0] >= self.outage_probability_per_day:
            return None
        first_q, last_q = self.supply_hours[0] * 4, self.supply_hours[1] * 4
        start_q = first_q + int(uniforms(self.seed, "outage/start", index)[0] * (last_q - first_q))
        mean_slots = self.mean_outage_hours * 4
        length = math.ceil(-mean_slots * math.log(uniforms(self.seed, "outage/length", index)[0]))
        length = min(max(length, 1), SLOTS_PER_DAY)
        day_first_slot = (day * DAY_SECONDS - self.utc_offset_s) // SLOT_SECONDS
        return day_first_slot + start_q, day_first_slot + start_q + length

    def _in_outage(self, slots: np.ndarray) -> np.ndarray:
        mask = np.zeros(len(slots), dtype=bool)
        if len(slots) == 0:
            return mask
        days = local_days(slots[[0, -1]], self.utc_offset_s)
        # An outage lasts at most a day, so only the previous day's can reach into range.
        for day in range(int(days[0]) - 1, int(days[1]) + 1):
            window = self._outage_slots(day)
            if window is not None:
                mask |= (slots >= window[0]) & (slots < window[1])
        return mask

    def slot_energy_mwh(self, first_slot: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        slots = slot_range(first_slot, count)
        pv = pv_power_w(slots, self.pv_kwp, self.tilt_deg, self.azimuth_deg, PLANT_MOUNT)
        pv = pv * mean_one_lognormal(self.seed, "plant/slot", slots, self.pv_sigma)
        pv = pv + wind_power_w(self.seed, slots, self.wind_kw)
        pv = np.where(self._in_outage(slots), pv * self.outage_derate, pv)
        return to_mwh(pv), np.zeros(count, dtype=np.int64)

    def energy(self, interval_start: int, interval_seconds: int) -> tuple[int, int]:
        """(produced_wh, consumed_wh); a plant's own consumption is not modelled (0)."""
        produced, consumed, _, _ = interval_mwh(self, interval_start, interval_seconds)
        return mwh_to_wh(produced), mwh_to_wh(consumed)

    def outage_windows(self, start: int, end: int) -> list[tuple[int, int]]:
        """Forced outages overlapping [start, end), clipped to it, oldest first."""
        windows = []
        offset = self.utc_offset_s
        first_day = (start + offset) // DAY_SECONDS - 1
        for day in range(first_day, (end + offset) // DAY_SECONDS + 1):
            window = self._outage_slots(day)
            if window is None:
                continue
            s, e = max(window[0] * SLOT_SECONDS, start), min(window[1] * SLOT_SECONDS, end)
            if s < e:
                windows.append((s, e))
        return windows

    def shortfall_windows(self, start: int, end: int, threshold_w: int) -> list[tuple[int, int]]:
        """Maximal runs of supply-hour quarter hours with mean power below ``threshold_w``,
        clipped to [start, end), oldest first."""
        first, count = covering_slots(start, max(end - start, 0))
        slots = slot_range(first, count)
        produced, _ = self.slot_energy_mwh(first, count)
        quarter = quarter_of_day(slots, self.utc_offset_s)
        supplying = (quarter >= self.supply_hours[0] * 4) & (quarter < self.supply_hours[1] * 4)
        short = supplying & (produced * _MWH_PER_SLOT_TO_W < threshold_w)
        windows: list[tuple[int, int]] = []
        run_start: int | None = None
        for slot, is_short in zip(slots.tolist(), short.tolist(), strict=True):
            if is_short and run_start is None:
                run_start = slot
            elif not is_short and run_start is not None:
                windows.append((run_start, slot))
                run_start = None
        if run_start is not None:
            windows.append((run_start, first + count))
        clipped = [(max(s * SLOT_SECONDS, start), min(e * SLOT_SECONDS, end)) for s, e in windows]
        return [(s, e) for s, e in clipped if s < e]
