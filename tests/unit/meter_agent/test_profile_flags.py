"""The simulated devices' profile flags: a plant's forced outages can be switched off (a test
whose contract must be delivered whenever it runs), and a probability outside [0, 1] is
refused before the agent starts."""

from __future__ import annotations

import argparse

import pytest

from gridledger_core.profiles.plant import PlantProfile
from gridledger_meter_agent.main import main, make_profile

START = 1_796_169_600  # 2026-12-02 00:00 UTC
YEAR = 365 * 86_400


def _plant(outage_probability: float) -> PlantProfile:
    profile = make_profile(argparse.Namespace(wind_kw=100.0,
                                              outage_probability=outage_probability),
                           "plant-2", "plant")
    assert isinstance(profile, PlantProfile)
    return profile


def test_a_plant_without_outages_has_none_in_a_year_and_the_default_keeps_them() -> None:
    assert _plant(0.0).outage_windows(START, START + YEAR) == []
    seeded = _plant(PlantProfile.outage_probability_per_day).outage_windows(START,
                                                                            START + YEAR)
    assert 10 < len(seeded) < 60  # about 8 % of the days


def test_an_outage_produces_nothing_even_with_wind() -> None:
    seeded = _plant(PlantProfile.outage_probability_per_day)
    start = seeded.outage_windows(START, START + YEAR)[0][0]
    assert seeded.energy(start, 900)[0] == 0
    assert _plant(0.0).energy(start, 900)[0] > 0


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan"])
def test_a_probability_outside_zero_to_one_is_refused(value: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--outage-probability", value])
    assert exit_info.value.code == 2
    assert "must be 0 to 1 (a probability)" in capsys.readouterr().err
