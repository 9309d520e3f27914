"""Reliability score and weighted plant choice: properties and explanation examples."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridledger_core.plants import (
    DEFAULT_PARAMS,
    PlantCandidate,
    ReliabilityParams,
    ScoringWeights,
    rank_plants,
    reliability_bp,
    shortfall_union,
)

NOW = 1_800_000_000
H = DEFAULT_PARAMS.horizon_s
PARAMS = [
    DEFAULT_PARAMS,
    ReliabilityParams(86_400, 900, 990_000),
    ReliabilityParams(3600, 60, 10**6),
]

# Windows around the horizon: some older than it, all ending no later than NOW.
window = st.tuples(st.integers(NOW - H - 5 * 86_400, NOW), st.integers(0, 3 * 86_400)).map(
    lambda t: (t[0], min(t[0] + t[1], NOW))
)
windows = st.lists(window, max_size=8)
params = st.sampled_from(PARAMS)


def test_reference_values() -> None:
    assert reliability_bp([], NOW) == 10_000
    assert reliability_bp([(NOW - H, NOW)], NOW) == 0
    assert reliability_bp([(NOW - H - 10, NOW + 10)], NOW) == 0
    # The same hour costs about twice as much one day ago as eight days ago (7-day half-life).
    yesterday = 10_000 - reliability_bp([(NOW - 86_400, NOW - 82_800)], NOW)
    last_week = 10_000 - reliability_bp([(NOW - 8 * 86_400, NOW - 8 * 86_400 + 3600)], NOW)
    assert (yesterday, last_week) == (40, 20)
    # Older than the horizon, in the future, or empty: no effect.
    assert (
        reliability_bp([(NOW - H - 100, NOW - H), (NOW, NOW + 500), (NOW - 9, NOW - 9)], NOW)
        == 10_000
    )


def test_rejects_malformed_windows() -> None:
    with pytest.raises(ValueError):
        reliability_bp([(NOW - 10, NOW - 20)], NOW)
    with pytest.raises(TypeError):
        reliability_bp([(NOW - 10.5, NOW)], NOW)  # type: ignore[list-item]


def test_overlapping_and_repeated_windows_count_once() -> None:
    a = (NOW - 10_000, NOW - 5_000)
    assert reliability_bp([a, a, (NOW - 8_000, NOW - 6_000)], NOW) == reliability_bp([a], NOW)
    assert shortfall_union([a, (NOW - 5_000, NOW - 4_000)], NOW, H) == [(NOW - 10_000, NOW - 4_000)]


@given(windows, params)
def test_bounded_deterministic_order_independent(
    ws: list[tuple[int, int]], p: ReliabilityParams
) -> None:
    score = reliability_bp(ws, NOW, p)
    assert 0 <= score <= 10_000
    assert reliability_bp(list(reversed(ws)), NOW, p) == score
    assert reliability_bp(sorted(ws), NOW, p) == score
    assert reliability_bp(ws + ws, NOW, p) == score


@given(windows, window, params)
def test_more_shortfalls_never_better(
    ws: list[tuple[int, int]], extra: tuple[int, int], p: ReliabilityParams
) -> None:
    assert reliability_bp([*ws, extra], NOW, p) <= reliability_bp(ws, NOW, p)


@given(windows, st.integers(0, len(PARAMS) - 1), st.data())
def test_longer_shortfalls_never_better(
    ws: list[tuple[int, int]], pi: int, data: st.DataObject
) -> None:
    p = PARAMS[pi]
    if not ws:
        return
    i = data.draw(st.integers(0, len(ws) - 1))
    start, end = ws[i]
    longer = list(ws)
    longer[i] = (
        start - data.draw(st.integers(0, 86_400)),
        min(end + data.draw(st.integers(0, 86_400)), NOW),
    )
    assert reliability_bp(longer, NOW, p) <= reliability_bp(ws, NOW, p)


@given(windows, st.integers(0, 4 * 86_400), params)
def test_more_recent_shortfalls_never_better(
    ws: list[tuple[int, int]], shift: int, p: ReliabilityParams
) -> None:
    # Move every window `shift` seconds closer to now (kept in the past).
    older = [(s - shift, e - shift) for s, e in ws]
    assert reliability_bp(ws, NOW, p) <= reliability_bp(older, NOW, p)


def test_single_window_recency_strictly_matters() -> None:
    recent = reliability_bp([(NOW - 7200, NOW - 3600)], NOW)
    old = reliability_bp([(NOW - 20 * 86_400, NOW - 20 * 86_400 + 3600)], NOW)
    assert recent < old < 10_000


# --- scoring -----------------------------------------------------------------------------

plant_ids = [f"plant-{c}" for c in "abcdef"]


@st.composite
def candidate_lists(draw: st.DrawFn) -> list[PlantCandidate]:
    n = draw(st.integers(1, len(plant_ids)))
    return [
        PlantCandidate(
            plant_ids[i],
            draw(st.integers(0, 1_000_000)),
            draw(st.integers(0, 10_000)),
            draw(st.integers(0, 50_000)),
        )
        for i in range(n)
    ]


weights = st.builds(ScoringWeights, st.integers(0, 5), st.integers(1, 5)) | st.builds(
    ScoringWeights, st.integers(1, 5), st.integers(0, 5)
)
requested = st.integers(1, 40_000)


def position(ranking, plant_id: str) -> int | None:
    return next((s.rank for s in ranking.ranked if s.plant_id == plant_id), None)


@given(candidate_lists(), requested, weights, st.randoms())
def test_ranking_is_order_independent_and_bounded(cands, req, w, rnd) -> None:
    ranking = rank_plants(cands, req, w)
    shuffled = list(cands)
    rnd.shuffle(shuffled)
    again = rank_plants(shuffled, req, w)
    assert again == ranking
    assert {e.candidate.plant_id for e in ranking.excluded} == {
        c.plant_id for c in cands if c.remaining_wh < req
    }
    for score in ranking.ranked:
        assert 0 <= score.score_bp <= 10_000 and 0 <= score.price_bp <= 10_000
        assert score.candidate.remaining_wh >= req
    assert [s.rank for s in ranking.ranked] == list(range(1, len(ranking.ranked) + 1))
    if ranking.ranked:
        assert ranking.winner == ranking.ranked[0]
        assert ranking.ranked == tuple(sorted(ranking.ranked, key=lambda s: -s.weighted_sum))


@given(candidate_lists(), requested, weights, st.data())
def test_lower_price_never_worse(cands, req, w, data) -> None:
    i = data.draw(st.integers(0, len(cands) - 1))
    target = cands[i]
    cheaper_price = data.draw(st.integers(0, target.price_micro_per_kwh))
    cheaper = list(cands)
    cheaper[i] = PlantCandidate(
        target.plant_id, cheaper_price, target.reliability_bp, target.remaining_wh
    )
    before, after = rank_plants(cands, req, w), rank_plants(cheaper, req, w)
    pos_before, pos_after = position(before, target.plant_id), position(after, target.plant_id)
    if pos_before is None:
        assert pos_after is None  # eligibility does not depend on price
        return
    assert pos_after is not None and pos_after <= pos_before
    score = {s.plant_id: s for s in before.ranked}[target.plant_id].score_bp
    assert {s.plant_id: s for s in after.ranked}[target.plant_id].score_bp >= score


@given(candidate_lists(), requested, weights, windows, window, st.data())
def test_more_shortfall_never_better(cands, req, w, ws, extra, data) -> None:
    i = data.draw(st.integers(0, len(cands) - 1))
    target = cands[i]

    def with_reliability(bp: int) -> list[PlantCandidate]:
        out = list(cands)
        out[i] = PlantCandidate(
            target.plant_id, target.price_micro_per_kwh, bp, target.remaining_wh
        )
        return out

    good = rank_plants(with_reliability(reliability_bp(ws, NOW)), req, w)
    worse = rank_plants(with_reliability(reliability_bp([*ws, extra], NOW)), req, w)
    pos_good, pos_worse = position(good, target.plant_id), position(worse, target.plant_id)
    if pos_good is None:
        return
    assert pos_worse is not None and pos_worse >= pos_good


@settings(max_examples=50)
@given(candidate_lists(), requested, weights)
def test_rank_is_deterministic(cands, req, w) -> None:
    assert rank_plants(cands, req, w) == rank_plants(list(cands), req, w)


def test_explanation_example() -> None:
    ranking = rank_plants(
        [
            PlantCandidate("plant-a", 150_000, 9_500, 1_000_000),
            PlantCandidate("plant-b", 120_000, 8_200, 1_000_000),
            PlantCandidate("plant-c", 100_000, 9_900, 2_000),
        ],
        requested_wh=5_000,
    )
    assert ranking.winner is not None and ranking.winner.plant_id == "plant-b"
    assert ranking.explanation == "\n".join(
        [
            "Request: 5000 Wh; price weight 50.0%, reliability weight 50.0%.",
            "Winner: plant-b with score 9100/10000 out of 2 eligible plant(s).",
            "plant-b beats plant-a by 350 points (+1000 from price, -650 from reliability).",
            "#1 plant-b: score 9100/10000 from price score 10000 (0.120000/kWh, the cheapest) "
            "and reliability 8200/10000; remaining 1000000 Wh",
            "#2 plant-a: score 8750/10000 from price score 8000 (0.150000/kWh, 25.0% above the "
            "cheapest) and reliability 9500/10000; remaining 1000000 Wh",
            "excluded plant-c: remaining 2000 Wh cannot cover the requested 5000 Wh",
        ]
    )


def test_reliability_weight_can_flip_the_choice() -> None:
    cands = [
        PlantCandidate("cheap-flaky", 100_000, 6_000, 10_000),
        PlantCandidate("dear-solid", 130_000, 9_900, 10_000),
    ]
    by_price = rank_plants(cands, 1_000, ScoringWeights(price=3, reliability=1))
    by_reliability = rank_plants(cands, 1_000, ScoringWeights(price=1, reliability=3))
    assert by_price.winner is not None and by_price.winner.plant_id == "cheap-flaky"
    assert by_reliability.winner is not None and by_reliability.winner.plant_id == "dear-solid"
    assert "price weight 25.0%, reliability weight 75.0%" in by_reliability.explanation


def test_no_eligible_plant_and_bad_inputs() -> None:
    ranking = rank_plants([PlantCandidate("p", 1, 10_000, 10)], 11)
    assert ranking.winner is None
    assert "No plant can cover the requested 11 Wh." in ranking.explanation
    with pytest.raises(ValueError):
        rank_plants([PlantCandidate("p", 1, 1, 1), PlantCandidate("p", 2, 2, 2)], 1)
    with pytest.raises(ValueError):
        PlantCandidate("p", 1, 10_001, 1)
    with pytest.raises(ValueError):
        ScoringWeights(0, 0)


def test_ties_break_on_price_then_reliability_then_id() -> None:
    ranking = rank_plants(
        [
            PlantCandidate("z", 100, 5_000, 10),
            PlantCandidate("a", 100, 5_000, 10),
        ],
        1,
    )
    assert [s.plant_id for s in ranking.ranked] == ["a", "z"]
    assert "ties with" in ranking.explanation
