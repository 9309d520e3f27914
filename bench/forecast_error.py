"""Forecast error of the meter forecaster against the persistence baseline (issue 3).

Data: simulated prosumer households from ``gridledger_core.profiles`` (the same profiles the
simulated meters post): rooftop PV from pvlib's bundled typical-meteorological-year weather
and household load from the BDEW H0 standard load profile, both with seeded day-to-day and
quarter-hour noise. Readings are hourly (as a meter posts them); the delivery slot is one
hour; every hour of a year is forecast from the readings before it.

Persistence = yesterday's energy in the same hour. Metrics per quantity (production,
consumption, net = production - consumption): MAE in Wh, MAPE in % over the hours whose
actual value is nonzero (night hours have no PV and are left out of its MAPE), and WAPE
(sum of absolute errors / sum of absolute actuals), which near-zero hours cannot blow up.
Run: ``.venv/bin/python -m bench.forecast_error [--profile quick|standard]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from bench.cli import profile_parser
from gridledger_core.market.forecast import (
    DAY_SECONDS,
    ForecastParams,
    Reading,
    Weighting,
    forecast,
)
from gridledger_core.profiles import HouseholdProfile

HOUR = 3_600
YEAR_START = 1_735_689_600  # 2025-01-01 00:00 UTC
MAX_WINDOW_DAYS = 14
CONFIGS: dict[str, ForecastParams] = {
    "7d linear (default)": ForecastParams(7, Weighting.LINEAR),
    "7d uniform": ForecastParams(7, Weighting.UNIFORM),
    "7d exponential": ForecastParams(7, Weighting.EXPONENTIAL),
    "3d linear": ForecastParams(3, Weighting.LINEAR),
    "14d linear": ForecastParams(14, Weighting.LINEAR),
}
PERSISTENCE = "persistence (yesterday)"
# (days forecast, households as (seed, kWp, annual kWh))
PROFILES = {
    "quick": (60, [(1, 5.0, 4_000.0)]),
    "standard": (365, [(1, 5.0, 4_000.0), (2, 8.0, 3_000.0), (3, 3.0, 5_500.0)]),
}
QUANTITIES = ("produced", "consumed", "net")


class Errors(NamedTuple):
    mae_wh: float
    mape_pct: float
    wape_pct: float


def hourly_readings(household: HouseholdProfile, first_hour: int, hours: int) -> list[Reading]:
    """Hourly readings from the profile's quarter-hour energies (integer Wh per hour)."""
    produced, consumed = household.slot_energy_mwh(first_hour // 900, hours * 4)
    produced_wh = (produced.reshape(hours, 4).sum(axis=1) + 500) // 1000
    consumed_wh = (consumed.reshape(hours, 4).sum(axis=1) + 500) // 1000
    readings = [
        Reading(first_hour + i * HOUR, HOUR, int(p), int(c))
        for i, (p, c) in enumerate(zip(produced_wh, consumed_wh, strict=True))
    ]
    # The meter-facing API must give the same numbers (it is slow, so only spot-check).
    for i in (0, hours // 3, hours // 2 + 13, hours - 1):
        assert household.energy(readings[i].interval_start, HOUR) == (
            readings[i].produced_wh,
            readings[i].consumed_wh,
        )
    return readings


def errors(actual: np.ndarray, predicted: np.ndarray) -> Errors:
    err = np.abs(predicted - actual).astype(float)
    nonzero = actual != 0
    mape = float(np.mean(err[nonzero] / np.abs(actual[nonzero])) * 100) if nonzero.any() else 0.0
    total = float(np.abs(actual).sum())
    return Errors(float(err.mean()), mape, float(err.sum()) / total * 100 if total else 0.0)


def predictions(readings: list[Reading], first: int, hours: int) -> dict[str, np.ndarray]:
    """Forecasts (produced, consumed) for hours ``first .. first+hours`` of ``readings``."""
    per_day = DAY_SECONDS // HOUR
    out: dict[str, np.ndarray] = {}
    for name, params in CONFIGS.items():
        values = np.empty((hours, 2), dtype=np.int64)
        for k in range(hours):
            i = first + k
            window = readings[i - per_day * params.window_days : i - per_day + 1]
            f = forecast(window, readings[i].interval_start, HOUR, params)
            values[k] = (f.produced_wh, f.consumed_wh)
        out[name] = values
    previous_day = readings[first - per_day : first - per_day + hours]
    out[PERSISTENCE] = np.array([(r.produced_wh, r.consumed_wh) for r in previous_day])
    return out


def run(profile: str = "standard") -> dict:
    days, households = PROFILES[profile]
    hours = days * 24
    first = MAX_WINDOW_DAYS * 24  # history before the first forecast hour
    actual_parts: list[np.ndarray] = []
    predicted_parts: dict[str, list[np.ndarray]] = {}
    for seed, kwp, annual_kwh in households:
        household = HouseholdProfile(seed=seed, pv_kwp=kwp, annual_kwh=annual_kwh)
        readings = hourly_readings(household, YEAR_START - first * HOUR, first + hours)
        actual_parts.append(
            np.array([(r.produced_wh, r.consumed_wh) for r in readings[first : first + hours]])
        )
        for name, values in predictions(readings, first, hours).items():
            predicted_parts.setdefault(name, []).append(values)

    actual = np.concatenate(actual_parts)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, parts in predicted_parts.items():
        predicted = np.concatenate(parts)
        columns = {
            "produced": (actual[:, 0], predicted[:, 0]),
            "consumed": (actual[:, 1], predicted[:, 1]),
            "net": (actual[:, 0] - actual[:, 1], predicted[:, 0] - predicted[:, 1]),
        }
        results[name] = {q: errors(*columns[q])._asdict() for q in QUANTITIES}

    print(
        f"forecast error [{profile}]: {len(households)} household(s) x {days} days of hourly "
        f"slots ({len(actual):,} forecasts per method); PV pvlib TMY3, load BDEW H0"
    )
    for q in QUANTITIES:
        print(f"  {q:<9} {'MAE Wh':>8} {'MAPE %':>8} {'WAPE %':>8}")
        for name in [PERSISTENCE, *CONFIGS]:
            e = results[name][q]
            print(f"    {name:<24} {e['mae_wh']:8.1f} {e['mape_pct']:8.1f} {e['wape_pct']:8.1f}")
    return {
        "profile": profile,
        "households": [{"seed": s, "pv_kwp": k, "annual_kwh": a} for s, k, a in households],
        "slot_seconds": HOUR,
        "forecasts_per_method": len(actual),
        "default": "7d linear (default)",
        "baseline": PERSISTENCE,
        "results": results,
    }


def main(argv: Sequence[str] | None = None) -> None:
    run(profile_parser(__doc__, PROFILES).parse_args(argv).profile)


if __name__ == "__main__":
    main()
