"""Plant reliability from shortfall windows (measured from live readings and declared), and
the weighted plant choice.

Pure, integer-only functions: every node computes the same numbers.
"""

from gridledger_core.plants.evidence import evidence_reliability_bp, record_reliability_bp
from gridledger_core.plants.reliability import (
    DEFAULT_PARAMS,
    ReliabilityParams,
    reliability_bp,
    shortfall_seconds,
    shortfall_union,
)
from gridledger_core.plants.scoring import (
    ExcludedPlant,
    PlantCandidate,
    PlantScore,
    Ranking,
    ScoringWeights,
    rank_plants,
)

__all__ = [
    "DEFAULT_PARAMS",
    "ExcludedPlant",
    "PlantCandidate",
    "PlantScore",
    "Ranking",
    "ReliabilityParams",
    "ScoringWeights",
    "evidence_reliability_bp",
    "rank_plants",
    "record_reliability_bp",
    "reliability_bp",
    "shortfall_seconds",
    "shortfall_union",
]
