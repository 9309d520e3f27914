"""Household load: the BDEW standard load profile H0 with the BDEW dynamisation function.

Method (BDEW/VDEW, "Repraesentative VDEW-Lastprofile", 1999, and the BDEW guide to
applying standard load profiles):

* Static profile: one quarter-hourly day curve per season and day type (values in
  ``_h0_table``). Seasons: winter 1 Nov - 20 Mar, transition 21 Mar - 14 May and
  15 Sep - 31 Oct, summer 15 May - 14 Sep. Day types: workday (Mon-Fri), Saturday,
  Sunday. Fixed-date holidays follow the BDEW rule: 1 Jan, 25 and 26 Dec count as Sunday;
  24 and 31 Dec (unless a Sunday) count as Saturday. Movable holidays are not modelled.
* Dynamisation: each day's static value is multiplied by
  ``F(t) = -3.92e-10 t^4 + 3.2e-7 t^3 - 7.02e-5 t^2 + 2.1e-3 t + 1.24``
  with ``t`` the day of the year (1 ... 365), which smooths the season edges and carries
  the winter/summer swing.
* Scaling: the dynamised profile is normalised so that the reference year 2023 sums to
  exactly the requested annual consumption (other years differ by well under 1 %).
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

import numpy as np

from gridledger_core.profiles._h0_table import H0_CENTIWATTS
from gridledger_core.profiles.timegrid import (
    SLOT_SECONDS,
    SLOTS_PER_DAY,
    TYPICAL_DAYS,
    local_days,
    month_day,
    quarter_of_day,
    slot_range,
    typical_day_of_year,
    weekday,
)

SEASONS = ("winter", "transition", "summer")
DAY_TYPES = ("workday", "saturday", "sunday")
_REFERENCE_YEAR = 2023
_H0_REFERENCE_KWH = 1000.0


def _doy(month: int, day: int) -> int:
    return dt.date(2023, month, day).timetuple().tm_yday - 1


@lru_cache(maxsize=1)
def _season_by_day() -> np.ndarray:
    season = np.zeros(TYPICAL_DAYS, dtype=np.int64)  # winter by default
    season[_doy(3, 21) : _doy(5, 15)] = 1
    season[_doy(9, 15) : _doy(11, 1)] = 1
    season[_doy(5, 15) : _doy(9, 15)] = 2
    return season


@lru_cache(maxsize=1)
def _static_table_w() -> np.ndarray:
    table = np.empty((len(SEASONS), len(DAY_TYPES), SLOTS_PER_DAY), dtype=np.float64)
    for s, season in enumerate(SEASONS):
        for d, day_type in enumerate(DAY_TYPES):
            table[s, d, :] = np.asarray(H0_CENTIWATTS[(season, day_type)]) / 100.0
    return table


def dynamisation(day_of_year_1: np.ndarray) -> np.ndarray:
    t = day_of_year_1.astype(np.float64)
    return -3.92e-10 * t**4 + 3.2e-7 * t**3 - 7.02e-5 * t**2 + 2.1e-3 * t + 1.24


def _day_types(days: np.ndarray) -> np.ndarray:
    wd = weekday(days)
    types = np.where(wd == 5, 1, np.where(wd == 6, 2, 0))
    month, day = month_day(days)
    sunday_like = ((month == 1) & (day == 1)) | ((month == 12) & ((day == 25) | (day == 26)))
    saturday_like = (month == 12) & ((day == 24) | (day == 31)) & (types != 2)
    types = np.where(saturday_like, 1, types)
    return np.where(sunday_like, 2, types)


def _h0_dynamic_w(slots: np.ndarray, utc_offset_s: int) -> np.ndarray:
    days = local_days(slots, utc_offset_s)
    doy = typical_day_of_year(days)
    table = _static_table_w()
    static = table[_season_by_day()[doy], _day_types(days), quarter_of_day(slots, utc_offset_s)]
    return static * dynamisation(doy + 1)


@lru_cache(maxsize=8)
def _normalisation(utc_offset_s: int) -> float:
    start = int(dt.datetime(_REFERENCE_YEAR, 1, 1, tzinfo=dt.UTC).timestamp()) - utc_offset_s
    slots = slot_range(start // SLOT_SECONDS, TYPICAL_DAYS * SLOTS_PER_DAY)
    annual_wh = float(_h0_dynamic_w(slots, utc_offset_s).sum()) * SLOT_SECONDS / 3600.0
    return _H0_REFERENCE_KWH * 1000.0 / annual_wh


def h0_power_w(slots: np.ndarray, utc_offset_s: int, annual_kwh: float) -> np.ndarray:
    """Mean household power (W) in each slot for a household using ``annual_kwh`` a year."""
    scale = annual_kwh / _H0_REFERENCE_KWH * _normalisation(utc_offset_s)
    return _h0_dynamic_w(slots, utc_offset_s) * scale
