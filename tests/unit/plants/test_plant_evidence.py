"""Reliability from evidence (issue 14 item 7): shortfall windows measured from a plant's
live readings, merged and bounded; a plant without readings is unscored."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from gridledger_core.plants import PlantCandidate, ScoringWeights, rank_plants, reliability_bp
from gridledger_core.plants.evidence import (
    add_windows,
    evidence_reliability_bp,
    is_shortfall,
    reading_windows,
    scoring_windows,
)
from gridledger_core.plants.reliability import DEFAULT_PARAMS, shortfall_seconds

NOW = 1_800_000_000
INTERVAL = 900
H = DEFAULT_PARAMS.horizon_s

window = st.tuples(st.integers(NOW - H - 86_400, NOW), st.integers(1, 86_400)).map(
    lambda t: (t[0], min(t[0] + t[1], NOW)))


def test_a_shortfall_interval_is_below_the_threshold_exactly() -> None:
    # 50 kW for 900 s is 12 500 Wh.
    assert is_shortfall(12_499, 50_000, INTERVAL)
    assert not is_shortfall(12_500, 50_000, INTERVAL)
    assert is_shortfall(0, 1, INTERVAL)


def test_one_reading_adds_its_interval_and_the_gap_since_the_previous_one() -> None:
    t = NOW - 10 * INTERVAL
    assert reading_windows(t, INTERVAL, 0, 50_000, last_reading_end=0) == [(t, t + INTERVAL)]
    assert reading_windows(t, INTERVAL, 20_000, 50_000, last_reading_end=t) == []
    assert reading_windows(t, INTERVAL, 20_000, 50_000, last_reading_end=t - 2 * INTERVAL) == [
        (t - 2 * INTERVAL, t)]
    # A late reading of an earlier interval adds no gap.
    assert reading_windows(t, INTERVAL, 20_000, 50_000, last_reading_end=t + INTERVAL) == []


def test_adjacent_shortfall_intervals_merge() -> None:
    t = NOW - 10 * INTERVAL
    merged = add_windows([(t, t + INTERVAL)], [(t + INTERVAL, t + 2 * INTERVAL)], NOW)
    assert merged == [(t, t + 2 * INTERVAL)]


@settings(max_examples=200, deadline=None)
@given(st.lists(window, max_size=30), st.lists(window, max_size=5), st.integers(1, 12))
def test_added_windows_never_remove_shortfall_and_stay_bounded(
        known: list[tuple[int, int]], new: list[tuple[int, int]], most: int) -> None:
    merged = add_windows(known, new, NOW, H, most)
    assert len(merged) <= most
    assert all(a[1] < b[0] for a, b in itertools.pairwise(merged))  # disjoint, apart
    covered = add_windows(merged, [*known, *new], NOW, H, 10**6)
    assert covered == add_windows(merged, [], NOW, H, 10**6)  # every input second is inside
    # Bounding only ever adds shortfall time, so it never raises the score.
    assert shortfall_seconds(merged, NOW, H) >= shortfall_seconds([*known, *new], NOW, H)


def test_a_plant_without_live_readings_has_no_score() -> None:
    assert scoring_windows([], [], 0, 0, NOW, 3600) is None
    assert evidence_reliability_bp([], [], 0, 0, NOW, 3600) is None
    assert evidence_reliability_bp([], [], 5, NOW, NOW, 3600) == 10_000
    ranking = rank_plants([PlantCandidate("silent", 1, None, 10**6),
                           PlantCandidate("measured", 500, 6_000, 10**6)], 100, ScoringWeights())
    assert [s.plant_id for s in ranking.ranked] == ["measured"]
    assert ranking.excluded[0].reason.startswith("unscored")


def test_a_plant_that_stops_reporting_loses_score_beyond_the_window() -> None:
    fresh = evidence_reliability_bp([], [], 10, NOW - 3600, NOW, 3600)
    silent_a_day = evidence_reliability_bp([], [], 10, NOW - 86_400, NOW, 3600)
    assert fresh == 10_000
    assert silent_a_day is not None and silent_a_day < fresh
    assert silent_a_day == reliability_bp([(NOW - 86_400 + 3600, NOW)], NOW)


@settings(max_examples=200, deadline=None)
@given(st.lists(window, max_size=6), st.lists(window, max_size=6), st.integers(1, 10**6),
       st.integers(NOW - 3 * 86_400, NOW))
def test_declared_windows_may_lower_the_score_never_raise_it(
        measured: list[tuple[int, int]], declared: list[tuple[int, int]], readings: int,
        last_end: int) -> None:
    without = evidence_reliability_bp([], measured, readings, last_end, NOW, 3600)
    with_declared = evidence_reliability_bp(declared, measured, readings, last_end, NOW, 3600)
    assert without is not None and with_declared is not None
    assert with_declared <= without
