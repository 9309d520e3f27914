"""Choosing a plant: a weighted score of price and reliability (claim 1 of seed 002).

For a request of ``requested_wh``:

1. Plants whose remaining energy is below ``requested_wh`` are excluded (with a reason), and
   so are unscored plants (``reliability_bp`` None: no live reading on the ledger, see
   evidence.py) — a plant without evidence is never ranked as if it were reliable.
2. Price score of each eligible plant, relative to the cheapest eligible price ``p_min``:
   ``price_bp = 10_000`` for the cheapest plant(s), otherwise
   ``floor(10_000 * p_min / price)`` (a plant 25 % dearer than the cheapest scores 8 000;
   if the cheapest is free, every other plant scores 0).
3. Score: ``score_bp = floor((w_price * price_bp + w_rel * reliability_bp) /
   (w_price + w_rel))`` with integer weights.
4. Ranking: by the exact weighted sum (not the floored score), then cheaper, then more
   reliable, then plant id, so the order is total, deterministic and independent of the
   order the candidates come in. The first plant wins.

Lowering a plant's price never lowers its price score and never raises any other plant's,
and lowering its reliability only lowers its own score: so a cheaper plant never ranks
worse and a less reliable one never ranks better.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gridledger_core.plants.reliability import BASIS_POINTS


@dataclass(frozen=True)
class PlantCandidate:
    plant_id: str
    price_micro_per_kwh: int
    reliability_bp: int | None  # None: unscored (no live readings)
    remaining_wh: int

    def __post_init__(self) -> None:
        if not self.plant_id:
            raise ValueError("plant_id must not be empty")
        if self.price_micro_per_kwh < 0 or self.remaining_wh < 0:
            raise ValueError(f"{self.plant_id}: price and remaining energy must be >= 0")
        if self.reliability_bp is not None and not 0 <= self.reliability_bp <= BASIS_POINTS:
            raise ValueError(f"{self.plant_id}: reliability_bp must be within 0 ... 10000")


@dataclass(frozen=True)
class ScoringWeights:
    price: int = 1
    reliability: int = 1

    def __post_init__(self) -> None:
        if self.price < 0 or self.reliability < 0 or self.price + self.reliability == 0:
            raise ValueError("weights must be >= 0 and not both 0")

    @property
    def total(self) -> int:
        return self.price + self.reliability


@dataclass(frozen=True)
class PlantScore:
    rank: int  # 1 = winner
    candidate: PlantCandidate
    price_bp: int
    score_bp: int
    weighted_sum: int  # w_price * price_bp + w_rel * reliability_bp, the exact sort key
    explanation: str

    @property
    def plant_id(self) -> str:
        return self.candidate.plant_id


@dataclass(frozen=True)
class ExcludedPlant:
    candidate: PlantCandidate
    reason: str


@dataclass(frozen=True)
class Ranking:
    requested_wh: int
    weights: ScoringWeights
    ranked: tuple[PlantScore, ...]
    excluded: tuple[ExcludedPlant, ...]
    explanation: str

    @property
    def winner(self) -> PlantScore | None:
        return self.ranked[0] if self.ranked else None


def format_price(micro_per_kwh: int) -> str:
    return f"{micro_per_kwh // 1_000_000}.{micro_per_kwh % 1_000_000:06d}/kWh"


def _percent(numerator: int, denominator: int) -> str:
    tenths = numerator * 1000 // denominator
    return f"{tenths // 10}.{tenths % 10}%"


def price_score_bp(price: int, cheapest: int) -> int:
    if price == cheapest:
        return BASIS_POINTS
    return BASIS_POINTS * cheapest // price


def _price_phrase(price: int, cheapest: int) -> str:
    if price == cheapest:
        return f"{format_price(price)}, the cheapest"
    if cheapest == 0:
        return f"{format_price(price)}, while another plant is free"
    return f"{format_price(price)}, {_percent(price - cheapest, cheapest)} above the cheapest"


def _weights_phrase(weights: ScoringWeights) -> str:
    return (
        f"price weight {_percent(weights.price, weights.total)}, "
        f"reliability weight {_percent(weights.reliability, weights.total)}"
    )


def _rel(c: PlantCandidate) -> int:
    assert c.reliability_bp is not None, "unscored plants are never ranked"
    return c.reliability_bp


def _exclusion(c: PlantCandidate, requested_wh: int) -> str | None:
    if c.reliability_bp is None:
        return "unscored: no live readings of the plant on the ledger"
    if c.remaining_wh < requested_wh:
        return f"remaining {c.remaining_wh} Wh cannot cover the requested {requested_wh} Wh"
    return None


def _why_winner(first: PlantScore, second: PlantScore, weights: ScoringWeights) -> str:
    price_diff = weights.price * (first.price_bp - second.price_bp)
    rel_diff = weights.reliability * (_rel(first.candidate) - _rel(second.candidate))
    if price_diff == -rel_diff:
        return (
            f"{first.plant_id} ties with {second.plant_id} on score and wins the tie "
            "(cheaper, then more reliable, then by id)"
        )
    margin = (price_diff + rel_diff) // weights.total
    return (
        f"{first.plant_id} beats {second.plant_id} by {margin} points "
        f"({price_diff // weights.total:+d} from price, "
        f"{rel_diff // weights.total:+d} from reliability)"
    )


def rank_plants(
    candidates: Iterable[PlantCandidate],
    requested_wh: int,
    weights: ScoringWeights | None = None,
) -> Ranking:
    """Rank the plants that can supply ``requested_wh`` Wh; see the module docstring."""
    weights = weights or ScoringWeights()
    if requested_wh <= 0:
        raise ValueError("requested_wh must be positive")
    pool = list(candidates)
    ids = [c.plant_id for c in pool]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate plant ids among the candidates")

    eligible = [c for c in pool if _exclusion(c, requested_wh) is None]
    excluded = tuple(
        ExcludedPlant(c, reason)
        for c in sorted(pool, key=lambda c: c.plant_id)
        if (reason := _exclusion(c, requested_wh)) is not None
    )
    cheapest = min((c.price_micro_per_kwh for c in eligible), default=0)

    scored = []
    for c in eligible:
        price_bp = price_score_bp(c.price_micro_per_kwh, cheapest)
        weighted = weights.price * price_bp + weights.reliability * _rel(c)
        scored.append((c, price_bp, weighted))
    scored.sort(
        key=lambda s: (-s[2], s[0].price_micro_per_kwh, -_rel(s[0]), s[0].plant_id)
    )

    ranked = tuple(
        PlantScore(
            rank=i + 1,
            candidate=c,
            price_bp=price_bp,
            score_bp=weighted // weights.total,
            weighted_sum=weighted,
            explanation=(
                f"#{i + 1} {c.plant_id}: score {weighted // weights.total}/10000 from "
                f"price score {price_bp} ({_price_phrase(c.price_micro_per_kwh, cheapest)}) "
                f"and reliability {c.reliability_bp}/10000; "
                f"remaining {c.remaining_wh} Wh"
            ),
        )
        for i, (c, price_bp, weighted) in enumerate(scored)
    )

    lines = [f"Request: {requested_wh} Wh; {_weights_phrase(weights)}."]
    if ranked:
        lines.append(
            f"Winner: {ranked[0].plant_id} with score {ranked[0].score_bp}/10000 "
            f"out of {len(ranked)} eligible plant(s)."
        )
        if len(ranked) > 1:
            lines.append(_why_winner(ranked[0], ranked[1], weights) + ".")
    else:
        lines.append(f"No plant can cover the requested {requested_wh} Wh.")
    lines.extend(s.explanation for s in ranked)
    lines.extend(f"excluded {e.candidate.plant_id}: {e.reason}" for e in excluded)
    return Ranking(requested_wh, weights, ranked, excluded, "\n".join(lines))
