"""A household with a rooftop PV array and a BDEW H0 load, seeded per meter.

Noise (all counter-based, see ``noise``), each with expectation 1 so the annual energy
keeps its scale:
* load: a per-day factor (lognormal, sigma 0.15: busy and quiet days) times a
  per-quarter-hour factor (sigma ``load_sigma``: appliances switching on and off);
* PV: a fixed per-meter system factor in [0.92, 1.0] (orientation, shading, soiling),
  times a per-quarter-hour factor (sigma ``pv_sigma``: passing clouds inside the hour).

Optional extras (0 by default): ``wind_kw``, a small turbine producing at any hour (see
``wind``), and ``base_load_w``, a constant load (heat pump, EV charger), so the devnet's demo
has sellers and buyers whatever the hour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gridledger_core.profiles.energy import interval_mwh, mwh_to_wh, to_mwh
from gridledger_core.profiles.load import h0_power_w
from gridledger_core.profiles.noise import mean_one_lognormal, uniforms
from gridledger_core.profiles.pv import ac_watts_per_kwp, typical_weather
from gridledger_core.profiles.timegrid import (
    local_days,
    quarter_of_day,
    slot_range,
    typical_day_of_year,
)
from gridledger_core.profiles.wind import wind_power_w

ROOFTOP_MOUNT = "close_mount_glass_glass"


def pv_power_w(
    slots: np.ndarray, kwp: float, tilt_deg: float, azimuth_deg: float, mount: str
) -> np.ndarray:
    """Noise-free AC power (W) of a ``kwp`` array in each slot, from the typical year."""
    offset = typical_weather().utc_offset_s
    hour = typical_day_of_year(local_days(slots, offset)) * 24 + quarter_of_day(slots, offset) // 4
    return ac_watts_per_kwp(float(tilt_deg), float(azimuth_deg), mount)[hour] * kwp


@dataclass(frozen=True)
class HouseholdProfile:
    seed: int
    pv_kwp: float
    annual_kwh: float
    tilt_deg: float = 30.0
    azimuth_deg: float = 180.0
    load_sigma: float = 0.35
    pv_sigma: float = 0.08
    wind_kw: float = 0.0
    base_load_w: float = 0.0

    def __post_init__(self) -> None:
        if min(self.pv_kwp, self.annual_kwh, self.wind_kw, self.base_load_w) < 0:
            raise ValueError("pv_kwp, annual_kwh, wind_kw and base_load_w must not be negative")

    @property
    def utc_offset_s(self) -> int:
        """Local standard time of the weather site, used for both PV and load."""
        return typical_weather().utc_offset_s

    def slot_energy_mwh(self, first_slot: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        slots = slot_range(first_slot, count)
        offset = self.utc_offset_s
        load = h0_power_w(slots, offset, self.annual_kwh)
        days = local_days(slots, offset)
        load = load * mean_one_lognormal(self.seed, "load/day", days, 0.15)
        load = load * mean_one_lognormal(self.seed, "load/slot", slots, self.load_sigma)
        load = load + self.base_load_w
        wind = wind_power_w(self.seed, slots, self.wind_kw)
        if self.pv_kwp == 0:
            return to_mwh(wind), to_mwh(load)
        pv = pv_power_w(slots, self.pv_kwp, self.tilt_deg, self.azimuth_deg, ROOFTOP_MOUNT)
        system = 0.92 + 0.08 * float(uniforms(self.seed, "pv/system", np.zeros(1))[0])
        pv = pv * system * mean_one_lognormal(self.seed, "pv/slot", slots, self.pv_sigma)
        return to_mwh(pv + wind), to_mwh(load)

    def energy(self, interval_start: int, interval_seconds: int) -> tuple[int, int]:
        """(produced_wh, consumed_wh) over [interval_start, interval_start + seconds)."""
        produced, consumed, _, _ = interval_mwh(self, interval_start, interval_seconds)
        return mwh_to_wh(produced), mwh_to_wh(consumed)

    def net_energy(self, interval_start: int, interval_seconds: int) -> tuple[int, int]:
        """(exported_wh, imported_wh): production and load netted per quarter hour."""
        _, _, exported, imported = interval_mwh(self, interval_start, interval_seconds)
        return mwh_to_wh(exported), mwh_to_wh(imported)
