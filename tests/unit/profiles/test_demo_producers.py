"""The demo's producers and consumers (issue 14 item 10): a wind-like producer has a surplus
at every UTC hour, a base load makes a household a buyer at every hour, and both are seeded
and reproducible like the PV and load profiles."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridledger_core.profiles import HouseholdProfile, PlantProfile
from gridledger_core.profiles.timegrid import SLOTS_PER_DAY, slot_range
from gridledger_core.profiles.wind import CAP, wind_power_w

START = 1_796_169_600  # 2026-12-02 00:00 UTC


def test_a_small_turbine_makes_a_household_a_seller_at_every_hour_of_every_day() -> None:
    turbine = HouseholdProfile(seed=2, pv_kwp=0.0, annual_kwh=4000.0, wind_kw=6.0)
    for hour in range(0, 7 * 24):
        exported, imported = turbine.net_energy(START + hour * 3600, 60)
        assert exported > 0 and imported == 0, f"no surplus at hour {hour}"


def test_a_base_load_makes_a_household_without_pv_a_buyer_at_every_hour() -> None:
    home = HouseholdProfile(seed=1, pv_kwp=0.0, annual_kwh=4000.0, base_load_w=3000.0)
    for hour in range(0, 7 * 24):
        exported, imported = home.net_energy(START + hour * 3600, 60)
        # 3 kW for a minute is 50 Wh, plus the H0 load.
        assert exported == 0 and imported >= 50, f"hour {hour}: {imported} Wh"


def test_a_hybrid_plant_produces_at_night_a_pv_plant_does_not() -> None:
    night = START + 6 * 3600  # 01:00 at the weather site (UTC-5)
    assert PlantProfile(seed=3).energy(night, 3600)[0] == 0
    produced, _ = PlantProfile(seed=3, wind_kw=100.0).energy(night, 3600)
    assert 30_000 < produced < 200_000


def test_wind_averages_its_mean_power_over_a_year() -> None:
    slots = slot_range(START // 900, 365 * SLOTS_PER_DAY)
    mean = float(wind_power_w(7, slots, 2.0).mean())
    assert abs(mean - 2000.0) < 0.05 * 2000.0


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), first=st.integers(0, 10**8), count=st.integers(0, 500),
       kw=st.floats(0.0, 1000.0))
def test_wind_is_reproducible_non_negative_and_capped(seed: int, first: int, count: int,
                                                      kw: float) -> None:
    slots = slot_range(first, count)
    power = wind_power_w(seed, slots, kw)
    assert power.shape == (count,)
    assert np.all(power >= 0) and np.all(power <= CAP * kw * 1000.0 + 1e-9)
    # Counter-based: a sub-range asked alone gives the same values.
    if count > 2:
        assert np.array_equal(wind_power_w(seed, slots[1:-1], kw), power[1:-1])


def test_negative_extras_are_refused() -> None:
    with pytest.raises(ValueError):
        HouseholdProfile(seed=1, pv_kwp=0.0, annual_kwh=1.0, wind_kw=-1.0)
    with pytest.raises(ValueError):
        HouseholdProfile(seed=1, pv_kwp=0.0, annual_kwh=1.0, base_load_w=-1.0)
    with pytest.raises(ValueError):
        PlantProfile(seed=1, wind_kw=-1.0)
    with pytest.raises(ValueError):
        wind_power_w(1, slot_range(0, 1), -1.0)
