"""Quarter-hour time grid and the mapping of real dates onto a typical (non-leap) year.

Every profile is piecewise constant on 900-second slots. Slot ``k`` covers the Unix
seconds ``[k * 900, (k + 1) * 900)``. Local time is a fixed offset from UTC (standard
time, no daylight saving: that is how typical-meteorological-year data is stamped), and
the offset must be a whole number of quarter hours so local and UTC slots coincide.

Any date maps onto the typical year by its calendar day: 29 February reuses 28 February,
so every year has 365 typical days (index 0 = 1 January ... 364 = 31 December).
"""

from __future__ import annotations

import numpy as np

SLOT_SECONDS = 900
SLOTS_PER_DAY = 96
DAY_SECONDS = 86_400
TYPICAL_DAYS = 365
# Day of year (0-based, non-leap) on which 1 March falls; leap-year days from here shift.
_MARCH_1_DOY = 59


def check_utc_offset(utc_offset_s: int) -> None:
    if utc_offset_s % SLOT_SECONDS != 0:
        raise ValueError(f"UTC offset {utc_offset_s}s is not a whole number of quarter hours")


def slot_range(first_slot: int, count: int) -> np.ndarray:
    if count < 0:
        raise ValueError("slot count must not be negative")
    return np.arange(first_slot, first_slot + count, dtype=np.int64)


def local_days(slots: np.ndarray, utc_offset_s: int) -> np.ndarray:
    """Local calendar day number (days since 1970-01-01 local) of each slot."""
    local_seconds = slots * SLOT_SECONDS + utc_offset_s
    return np.floor_divide(local_seconds, DAY_SECONDS)


def quarter_of_day(slots: np.ndarray, utc_offset_s: int) -> np.ndarray:
    local_seconds = slots * SLOT_SECONDS + utc_offset_s
    return np.floor_divide(np.mod(local_seconds, DAY_SECONDS), SLOT_SECONDS)


def typical_day_of_year(days: np.ndarray) -> np.ndarray:
    """0-based day in the typical 365-day year for local day numbers ``days``."""
    dates = days.astype("datetime64[D]")
    year_starts = dates.astype("datetime64[Y]").astype("datetime64[D]")
    doy = (dates - year_starts).astype(np.int64)
    years = dates.astype("datetime64[Y]").astype(np.int64) + 1970
    leap = (years % 4 == 0) & ((years % 100 != 0) | (years % 400 == 0))
    # In a leap year 29 Feb (doy 59) becomes 28 Feb (58) and later days move back by one.
    return np.where(leap & (doy >= _MARCH_1_DOY), doy - 1, doy)


def weekday(days: np.ndarray) -> np.ndarray:
    """Monday = 0 ... Sunday = 6 (1970-01-01 was a Thursday)."""
    return np.mod(days + 3, 7)


def month_day(days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dates = days.astype("datetime64[D]")
    months = dates.astype("datetime64[M]")
    month = months.astype(np.int64) % 12 + 1
    day = (dates - months.astype("datetime64[D]")).astype(np.int64) + 1
    return month, day
