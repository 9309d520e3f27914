"""Tests of the meter forecaster: example rules and hypothesis properties."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridledger_core.market.forecast import (
    DAY_SECONDS,
    Forecast,
    ForecastParams,
    Reading,
    Weighting,
    forecast,
    history_window,
    net_forecast,
)

HOUR = 3_600
SLOT = 1_767_268_800  # 2026-01-01 12:00 UTC
UNIFORM3 = ForecastParams(3, Weighting.UNIFORM)
LINEAR3 = ForecastParams(3, Weighting.LINEAR)


def day_reading(days_back: int, produced: int, consumed: int = 0, slot: int = SLOT) -> Reading:
    """One reading covering exactly the slot's span ``days_back`` days before it."""
    return Reading(slot - days_back * DAY_SECONDS, HOUR, produced, consumed)


def test_no_history_forecasts_zero_with_a_flag() -> None:
    result = forecast([], SLOT, HOUR)
    assert result == Forecast(0, 0, ()) and not result.has_history and result.net_wh == 0


def test_weightings() -> None:
    readings = [day_reading(1, 300), day_reading(2, 200), day_reading(3, 100)]
    assert forecast(readings, SLOT, HOUR, UNIFORM3).produced_wh == 200
    # Linear: weights 3, 2, 1 -> 1400 / 6 = 233.3 -> 233.
    assert forecast(readings, SLOT, HOUR, LINEAR3).produced_wh == 233
    # Exponential: weights 4, 2, 1 -> 1700 / 7 = 242.9 -> 243.
    exponential = ForecastParams(3, Weighting.EXPONENTIAL)
    assert forecast(readings, SLOT, HOUR, exponential).produced_wh == 243


def test_rounding_is_half_up() -> None:
    readings = [day_reading(1, 2), day_reading(2, 1)]
    assert forecast(readings, SLOT, HOUR, ForecastParams(2, Weighting.UNIFORM)).produced_wh == 2
    readings = [day_reading(1, 1), day_reading(2, 0)]
    assert forecast(readings, SLOT, HOUR, ForecastParams(2, Weighting.UNIFORM)).produced_wh == 1


def test_missing_day_renormalises_the_weights() -> None:
    readings = [day_reading(1, 300), day_reading(3, 100)]
    result = forecast(readings, SLOT, HOUR, LINEAR3)
    assert result.produced_wh == 250  # (3 * 300 + 1 * 100) / (3 + 1)
    assert [(s.days_back, s.weight) for s in result.days] == [(1, 3), (3, 1)]


def test_partially_covered_day_is_left_out() -> None:
    half = Reading(SLOT - 2 * DAY_SECONDS, HOUR // 2, 999, 0)
    result = forecast([day_reading(1, 100), half], SLOT, HOUR, LINEAR3)
    assert result.produced_wh == 100 and [s.days_back for s in result.days] == [1]


def test_quarter_hour_readings_are_summed_into_the_slot() -> None:
    readings = [Reading(SLOT - DAY_SECONDS + q * 900, 900, 10 * (q + 1), 5) for q in range(4)] + [
        Reading(SLOT - DAY_SECONDS + 4 * 900, 900, 1_000, 1_000)
    ]  # after the span
    result = forecast(readings, SLOT, HOUR, ForecastParams(1))
    assert (result.produced_wh, result.consumed_wh) == (100, 20)


def test_hourly_readings_are_prorated_into_a_quarter_hour_slot() -> None:
    hour = Reading(SLOT - DAY_SECONDS, HOUR, 1_001, 403)
    result = forecast([hour], SLOT + 900, 900, ForecastParams(1))
    assert (result.produced_wh, result.consumed_wh) == (250, 100)  # quarters, rounded down


def test_as_of_ignores_readings_not_yet_recorded() -> None:
    readings = [day_reading(1, 300), day_reading(2, 100)]
    assert forecast(readings, SLOT, HOUR, UNIFORM3).produced_wh == 200
    as_of = SLOT - DAY_SECONDS  # day 1's interval ends after this
    assert forecast(readings, SLOT, HOUR, UNIFORM3, as_of=as_of).produced_wh == 100


def test_readings_outside_the_window_do_not_count() -> None:
    inside = [day_reading(1, 100), day_reading(3, 100)]
    outside = [day_reading(0, 5_000), day_reading(4, 5_000), day_reading(-1, 5_000)]
    outside.append(Reading(SLOT - DAY_SECONDS + HOUR, HOUR, 5_000, 0))  # next hour
    assert forecast(inside + outside, SLOT, HOUR, LINEAR3) == forecast(inside, SLOT, HOUR, LINEAR3)
    start, end = history_window(SLOT, HOUR, LINEAR3)
    assert (start, end) == (SLOT - 3 * DAY_SECONDS, SLOT - DAY_SECONDS + HOUR)


def test_net_forecast_is_surplus_positive() -> None:
    readings = [day_reading(1, 700, 200)]
    assert net_forecast(readings, SLOT, HOUR, ForecastParams(1)) == 500
    readings = [day_reading(1, 0, 300)]
    assert forecast(readings, SLOT, HOUR, ForecastParams(1)).net_wh == -300


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="overlap"):
        forecast([day_reading(1, 1), day_reading(1, 2)], SLOT, HOUR)
    with pytest.raises(ValueError, match="negative"):
        forecast([day_reading(1, -1)], SLOT, HOUR)
    with pytest.raises(ValueError, match="length"):
        forecast([Reading(SLOT - DAY_SECONDS, 0, 1, 1)], SLOT, HOUR)
    with pytest.raises(ValueError, match="slot_seconds"):
        forecast([], SLOT, 0)
    with pytest.raises(ValueError, match="slot_seconds"):
        forecast([], SLOT, DAY_SECONDS + 1)
    with pytest.raises(ValueError, match="window_days"):
        ForecastParams(0)


# ---- properties ---------------------------------------------------------------------------

params_st = st.builds(ForecastParams, st.integers(1, 10), st.sampled_from(list(Weighting)))
energy = st.integers(0, 50_000)


@st.composite
def histories(draw: st.DrawFn) -> tuple[ForecastParams, int, int, dict, list[Reading]]:
    """A window of day energies (some days missing), cut into 1-4 readings per day."""
    params = draw(params_st)
    slot_seconds = draw(st.sampled_from([900, 1_800, HOUR]))
    slot = SLOT + draw(st.integers(0, 95)) * 900
    day_values: dict[int, tuple[int, int]] = {}
    readings: list[Reading] = []
    for d in range(1, params.window_days + 1):
        if not draw(st.booleans()) and draw(st.booleans()):  # ~25 % of days missing
            continue
        produced, consumed = draw(energy), draw(energy)
        day_values[d] = (produced, consumed)
        pieces = draw(st.sampled_from([p for p in (1, 2, 3, 4) if slot_seconds % p == 0]))
        length = slot_seconds // pieces
        p_left, c_left = produced, consumed
        for i in range(pieces):
            p = p_left if i == pieces - 1 else draw(st.integers(0, p_left))
            c = c_left if i == pieces - 1 else draw(st.integers(0, c_left))
            p_left, c_left = p_left - p, c_left - c
            readings.append(Reading(slot - d * DAY_SECONDS + i * length, length, p, c))
    return params, slot, slot_seconds, day_values, readings


@settings(max_examples=200, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_forecast_properties(history: tuple, rng: random.Random) -> None:
    params, slot, slot_seconds, day_values, readings = history
    result = forecast(readings, slot, slot_seconds, params)
    # Deterministic and invariant to the order of the readings.
    assert forecast(list(readings), slot, slot_seconds, params) == result
    shuffled = list(readings)
    rng.shuffle(shuffled)
    assert forecast(shuffled, slot, slot_seconds, params) == result
    assert isinstance(result.produced_wh, int) and isinstance(result.consumed_wh, int)
    assert result.net_wh == result.produced_wh - result.consumed_wh

    # It sees exactly the days present, with their energies.
    assert {s.days_back: (s.produced_wh, s.consumed_wh) for s in result.days} == day_values
    if not day_values:
        assert result == Forecast(0, 0, ())
        return
    for index, value in ((0, result.produced_wh), (1, result.consumed_wh)):
        values = [v[index] for v in day_values.values()]
        # Bounded by the window's day values, and the exact weighted mean rounded half up.
        assert min(values) <= value <= max(values)
        weights = {d: params.weight(d) for d in day_values}
        exact = Fraction(
            sum(weights[d] * v[index] for d, v in day_values.items()), sum(weights.values())
        )
        assert abs(value - exact) <= Fraction(1, 2)
        assert value - exact != Fraction(-1, 2)  # ties go up


@settings(max_examples=100, deadline=None)
@given(params_st, energy, energy, st.sampled_from([900, HOUR]), st.integers(0, 95))
def test_constant_history_forecasts_that_constant(
    params: ForecastParams, produced: int, consumed: int, slot_seconds: int, quarter: int
) -> None:
    slot = SLOT + quarter * 900
    readings = [
        Reading(slot - d * DAY_SECONDS, slot_seconds, produced, consumed)
        for d in range(1, params.window_days + 1)
    ]
    result = forecast(readings, slot, slot_seconds, params)
    assert (result.produced_wh, result.consumed_wh) == (produced, consumed)
    assert len(result.days) == params.window_days
