"""A steady producer that runs at any hour: a small wind turbine (or a battery discharging on
a schedule), for demo meters and plants that must have energy to sell at night too.

Power = rated power x capacity factor, where the capacity factor is a per-UTC-day level
(lognormal, sigma ``day_sigma``: windy and calm days) times a per-quarter-hour factor
(sigma ``slot_sigma``: gusts), both with expectation 1 and counter-based (see ``noise``), so
the profile is reproducible and independent of how it is queried. It is capped at the rated
power's ``cap`` multiple. Yesterday's same hour forecasts today's only roughly, as with PV.
"""

from __future__ import annotations

import numpy as np

from gridledger_core.profiles.noise import mean_one_lognormal
from gridledger_core.profiles.timegrid import SLOTS_PER_DAY

DAY_SIGMA = 0.2
SLOT_SIGMA = 0.1
CAP = 2.0


def wind_power_w(seed: int, slots: np.ndarray, mean_kw: float) -> np.ndarray:
    """Mean power (W) in each quarter-hour slot of a producer averaging ``mean_kw``."""
    if mean_kw < 0:
        raise ValueError("mean_kw must not be negative")
    if mean_kw == 0 or len(slots) == 0:
        return np.zeros(len(slots), dtype=np.float64)
    days = np.floor_divide(slots, SLOTS_PER_DAY)
    level = mean_one_lognormal(seed, "wind/day", days, DAY_SIGMA)
    gust = mean_one_lognormal(seed, "wind/slot", slots, SLOT_SIGMA)
    return np.minimum(mean_kw * 1000.0 * level * gust, CAP * mean_kw * 1000.0)
