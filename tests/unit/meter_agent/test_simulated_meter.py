"""SimulatedMeter: counters derived deterministically from the profile."""

from __future__ import annotations

import pytest

from gridledger_core.profiles import HouseholdProfile
from gridledger_meter_agent.drivers import MeterState, SimulatedMeter, interval_energy

COMMISSIONED = 1_767_225_600  # 2026-01-01 00:00 UTC
PROFILE = HouseholdProfile(seed=7, pv_kwp=6.0, annual_kwh=3500.0)


def test_counters_start_at_zero_and_never_decrease() -> None:
    meter = SimulatedMeter(PROFILE, COMMISSIONED)
    assert meter.status().state is MeterState.NOT_READ
    first = meter.read_counters(now=COMMISSIONED)
    assert first is not None and (first.exported_wh, first.imported_wh) == (0, 0)
    previous = first
    for step in range(1, 200):
        reading = meter.read_counters(now=COMMISSIONED + step * 1234)
        assert reading is not None
        assert reading.exported_wh >= previous.exported_wh
        assert reading.imported_wh >= previous.imported_wh
        previous = reading
    assert previous.imported_wh > 0
    assert meter.status().state is MeterState.OK


def test_restarted_meter_reads_exactly_the_same_counters() -> None:
    times = [COMMISSIONED + 40 * 86_400 + k * 777 for k in range(0, 300, 37)]
    running = SimulatedMeter(PROFILE, COMMISSIONED)
    readings = [running.read_counters(now=t) for t in times]
    for t, expected in zip(times, readings, strict=True):
        restarted = SimulatedMeter(PROFILE, COMMISSIONED)
        assert restarted.read_counters(now=t) == expected
    # Asking about an earlier time after a later one gives the same answer too.
    assert running.read_counters(now=times[0]) == readings[0]


def test_counter_differences_match_the_profile_net_energy() -> None:
    meter = SimulatedMeter(PROFILE, COMMISSIONED)
    start = COMMISSIONED + 150 * 86_400
    a = meter.read_counters(now=start)
    b = meter.read_counters(now=start + 86_400)
    assert a is not None and b is not None
    delta = interval_energy(a, b)
    exported, imported = PROFILE.net_energy(start, 86_400)
    # Counters floor their totals, the profile rounds: at most 1 Wh apart each.
    assert abs(delta.exported_wh - exported) <= 1
    assert abs(delta.imported_wh - imported) <= 1
    assert delta.exported_wh > 0  # a sunny-season day exports


def test_different_seeds_give_different_meters() -> None:
    other = HouseholdProfile(seed=8, pv_kwp=6.0, annual_kwh=3500.0)
    t = COMMISSIONED + 10 * 86_400
    assert SimulatedMeter(PROFILE, COMMISSIONED).read_counters(now=t) != SimulatedMeter(
        other, COMMISSIONED
    ).read_counters(now=t)


def test_interval_energy_refuses_inconsistent_readings() -> None:
    meter = SimulatedMeter(PROFILE, COMMISSIONED)
    a = meter.read_counters(now=COMMISSIONED + 86_400)
    b = meter.read_counters(now=COMMISSIONED + 2 * 86_400)
    assert a is not None and b is not None
    with pytest.raises(ValueError):
        interval_energy(b, a)
