"""The plant directory of a meter (claims 1-3 of seed 002).

The agent learns plant ids from committed announcements it sees (commit_watch.py) and from
neighbouring meter-agents (neighbours.py). A neighbour's answer is only a hint: a plant
counts once the ledger has a record of it, and every number used to rank plants (price,
shortfall windows, remaining energy) is read from the ledger, never taken from the hint.
Reliability is the evidence score (plants/evidence.py): shortfalls the ledger measured from
the plant's own readings plus those it declared; a plant with no readings is unscored and
never chosen.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from gridledger.common.v1 import energy_pb2
from gridledger_core.plants import (
    PlantCandidate,
    Ranking,
    ScoringWeights,
    rank_plants,
    record_reliability_bp,
)
from gridledger_meter_agent.ledger_client import LedgerClient

LEDGER = "ledger"


@dataclass
class Entry:
    record: energy_pb2.PlantRecord
    source: str  # "ledger" or "neighbour:<agent>"
    reliability_bp: int | None  # None: unscored (no live readings on the ledger)


@dataclass(frozen=True)
class RankedDirectory:
    ranking: Ranking
    records: dict[str, energy_pb2.PlantRecord]
    sources: dict[str, str]
    scored_at: int


class PlantDirectory:
    def __init__(self, ledger: LedgerClient, submission_window_s: int = 3600) -> None:
        self._ledger = ledger
        self._window = submission_window_s
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def knows(self, plant: str) -> bool:
        with self._lock:
            return plant in self._entries

    def learn(self, plant: str, source: str | None) -> bool:
        """Add (or refresh) `plant` if the ledger has it; returns whether it does. The source
        says how the agent knew: a neighbour's hint until the agent sees the plant announce
        in a committed block itself."""
        record = self._ledger.plant(plant)
        if record is None:
            return False
        with self._lock:
            known = self._entries.get(plant)
            # A hint never overrides what is known; seeing the announcement itself does.
            # source None is a refresh that keeps the source.
            if known is not None and source != LEDGER:
                source = known.source
            self._entries[plant] = Entry(record, source or LEDGER, self.reliability(
                record, int(time.time())))
        return True

    def reliability(self, record: energy_pb2.PlantRecord, now: int) -> int | None:
        return record_reliability_bp(record, now, self._window)

    def entries(self) -> list[tuple[str, Entry]]:
        with self._lock:
            return sorted(self._entries.items())

    def rank(self, energy_wh: int, weights: ScoringWeights) -> RankedDirectory:
        """Rank the known plants on their current ledger records (refreshed now)."""
        now = int(time.time())
        for plant, _ in self.entries():
            self.learn(plant, None)
        entries = self.entries()
        candidates = [PlantCandidate(plant, e.record.price_micro_per_kwh,
                                     self.reliability(e.record, now), e.record.remaining_wh)
                      for plant, e in entries]
        return RankedDirectory(rank_plants(candidates, energy_wh, weights),
                               {p: e.record for p, e in entries},
                               {p: e.source for p, e in entries}, now)
