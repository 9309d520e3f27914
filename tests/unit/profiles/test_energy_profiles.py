"""Household and plant profiles: realistic magnitudes, seeded and reproducible."""

from __future__ import annotations

import datetime as dt

import numpy as np

from gridledger_core.profiles import SLOT_SECONDS, HouseholdProfile, PlantProfile
from gridledger_core.profiles.timegrid import typical_day_of_year

OFFSET = -5 * 3600  # the bundled TMY3 site (Greensboro, NC) is UTC-5


def local(year: int, month: int, day: int, hour: int = 0) -> int:
    naive = dt.datetime(year, month, day, hour, tzinfo=dt.UTC)
    return int(naive.timestamp()) - OFFSET


def test_annual_load_matches_annual_kwh_and_pv_yield_is_plausible() -> None:
    home = HouseholdProfile(seed=1, pv_kwp=5.0, annual_kwh=4000.0)
    produced, consumed = home.energy(local(2025, 1, 1), 365 * 86_400)
    assert abs(consumed - 4_000_000) < 0.03 * 4_000_000
    # Greensboro, 30 deg south: roughly 1,100-1,500 kWh per kWp and year.
    assert 5 * 1_100_000 < produced < 5 * 1_500_000


def test_same_seed_same_energy_other_seed_different() -> None:
    start = local(2026, 6, 3, 6)
    a = HouseholdProfile(seed=3, pv_kwp=4.0, annual_kwh=3000.0)
    b = HouseholdProfile(seed=3, pv_kwp=4.0, annual_kwh=3000.0)
    c = HouseholdProfile(seed=4, pv_kwp=4.0, annual_kwh=3000.0)
    assert a.energy(start, 3600) == b.energy(start, 3600)
    assert a.energy(start, 86_400) != c.energy(start, 86_400)


def test_pv_is_zero_at_night_and_high_at_summer_noon() -> None:
    home = HouseholdProfile(seed=5, pv_kwp=5.0, annual_kwh=3000.0)
    assert home.energy(local(2026, 6, 21, 1), 3 * 3600)[0] == 0
    noon = [home.energy(local(2026, 6, d, 12), 3600)[0] for d in range(1, 31)]
    assert max(noon) > 2_500  # over half the kWp on the best June noon hour


def test_winter_load_exceeds_summer_load_through_dynamisation() -> None:
    home = HouseholdProfile(seed=9, pv_kwp=0.0, annual_kwh=3000.0)
    january = home.energy(local(2026, 1, 5), 28 * 86_400)[1]
    july = home.energy(local(2026, 7, 6), 28 * 86_400)[1]
    assert january > 1.2 * july


def test_any_date_maps_onto_the_typical_year() -> None:
    home = HouseholdProfile(seed=2, pv_kwp=3.0, annual_kwh=2500.0)
    for year in (1975, 2024, 2099):
        produced, consumed = home.energy(local(year, 3, 1, 12), 3600)
        assert produced > 0 and consumed > 0
    feb29 = np.asarray([(dt.date(2024, 2, 29) - dt.date(1970, 1, 1)).days])
    feb28 = np.asarray([(dt.date(2023, 2, 28) - dt.date(1970, 1, 1)).days])
    dec31 = np.asarray([(dt.date(2024, 12, 31) - dt.date(1970, 1, 1)).days])
    assert typical_day_of_year(feb29) == typical_day_of_year(feb28) == 58
    assert typical_day_of_year(dec31) == 364


def test_splitting_an_interval_changes_energy_by_rounding_only() -> None:
    home = HouseholdProfile(seed=11, pv_kwp=5.0, annual_kwh=4000.0)
    start = local(2026, 5, 10, 7) + 123
    whole = home.energy(start, 6 * 3600)
    parts = [home.energy(start + k * 1800, 1800) for k in range(12)]
    for i in range(2):
        assert abs(sum(p[i] for p in parts) - whole[i]) <= 12


def test_net_energy_never_exceeds_gross() -> None:
    home = HouseholdProfile(seed=12, pv_kwp=5.0, annual_kwh=4000.0)
    start = local(2026, 8, 1)
    produced, consumed = home.energy(start, 7 * 86_400)
    exported, imported = home.net_energy(start, 7 * 86_400)
    assert 0 < exported <= produced and 0 < imported <= consumed
    # Net and gross agree on the balance up to rounding.
    assert abs((produced - consumed) - (exported - imported)) <= 2


def test_plant_outages_produce_nothing_and_are_shortfalls() -> None:
    plant = PlantProfile(seed=21, pv_kwp=800.0, outage_probability_per_day=0.5)
    start, end = local(2026, 6, 1), local(2026, 7, 1)
    outages = plant.outage_windows(start, end)
    assert outages, "half of the days should see an outage"
    for s, e in outages:
        assert s % SLOT_SECONDS == 0 and e > s
        assert plant.energy(s, e - s)[0] == 0
    shortfalls = plant.shortfall_windows(start, end, threshold_w=50_000)
    for s, _e in outages:
        # Every outage quarter hour inside the supply hours lies in some shortfall window.
        hour = ((s + OFFSET) % 86_400) // 3600
        if 9 <= hour < 16:
            assert any(ws <= s < we for ws, we in shortfalls)
    assert all(we > ws for ws, we in shortfalls)
    assert shortfalls == sorted(shortfalls)


def test_plant_without_outages_is_deterministic_and_large() -> None:
    plant = PlantProfile(seed=22, pv_kwp=500.0, outage_probability_per_day=0.0)
    start = local(2026, 4, 1)
    assert plant.outage_windows(start, start + 30 * 86_400) == []
    produced, consumed = plant.energy(start, 30 * 86_400)
    assert consumed == 0
    assert produced > 500 * 60_000  # > 60 kWh per kWp in a spring month
    assert PlantProfile(seed=22, pv_kwp=500.0, outage_probability_per_day=0.0).energy(
        start, 86_400
    ) == plant.energy(start, 86_400)
