"""Seeded random schedules through the real replicas (see consensus.simulation).

GRIDLEDGER_SIM_SCHEDULES sets how many schedules run (default 1000);
GRIDLEDGER_SIM_SEED=<seed> with ``-k replay`` re-runs one schedule, as failures print, in
the mode GRIDLEDGER_SIM_MODE names (``honest``, the default, or ``byzantine``: the
schedules of test_byzantine_simulation.py).
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

from gridledger_core.consensus import simulation
from gridledger_core.consensus.quorum import Quorum

SCHEDULES = int(os.environ.get("GRIDLEDGER_SIM_SCHEDULES", "1000"))
CHUNKS = 10
FEATURES = {
    "loss",
    "duplication",
    "reordering",
    "certificate-loss",
    "partition",
    "crash-restart",
    "frozen-primary",
    "twins",
}


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_random_schedules(chunk: int) -> None:
    failures = []
    for seed in range(chunk, SCHEDULES, CHUNKS):
        result = simulation.run_schedule(seed)
        if result.violations:
            failures.append(result)
        elif not any(h >= 1 for h in result.heights.values()):
            failures.append(result)  # cannot happen while liveness holds; guards the checker
    assert not failures, simulation.failure_report(failures)


def test_schedules_cover_every_fault_and_both_sizes() -> None:
    """The schedules ``test_random_schedules`` runs draw every fault often, and both sizes
    (drawing a schedule is cheap: boot and plan, no run)."""
    seen: Counter[str] = Counter()
    sizes: Counter[int] = Counter()
    for seed in range(SCHEDULES):
        sim = simulation.Simulation(seed)
        sim.prepare()
        seen.update(sim.features)
        sizes[sim.n] += 1
    assert set(seen) == FEATURES
    assert min(seen.values()) >= SCHEDULES // 10
    assert sizes[4] and sizes[7]


@pytest.mark.parametrize("seed", [101, 202, 303, 404])
def test_schedules_with_real_ed25519_and_ecvrf(seed: int) -> None:
    result = simulation.run_schedule(seed, real_crypto=True)
    assert not result.violations, simulation.failure_report([result])
    assert max(result.heights.values()) >= 1


def test_seven_orderers() -> None:
    failures = [
        r for r in (simulation.run_schedule(s, n=7) for s in range(5000, 5030)) if r.violations
    ]
    assert not failures, simulation.failure_report(failures)


def test_checker_catches_a_broken_quorum(monkeypatch: pytest.MonkeyPatch) -> None:
    """With certificates of f+1 instead of 2f+1 the invariants must fail: the checker works."""
    monkeypatch.setattr(Quorum, "q", property(lambda self: self.f + 1))
    results = [simulation.run_schedule(seed) for seed in range(120)]
    kinds = {v.split(":")[0] for r in results for v in r.violations}
    assert "agreement" in kinds


def test_replay() -> None:
    """Re-runs the schedule GRIDLEDGER_SIM_SEED names (by default: seed 0, in both modes,
    and checks that a replay is exactly the run it replays)."""
    seed = os.environ.get("GRIDLEDGER_SIM_SEED")
    if seed is None:
        for mode in simulation.MODES:
            first, again = (simulation.run_schedule(0, mode=mode) for _ in range(2))
            assert (first.heights, first.events, first.violations) == (
                again.heights, again.events, again.violations
            )
            assert not first.violations, simulation.failure_report([first])
        return
    mode = os.environ.get("GRIDLEDGER_SIM_MODE", "honest")
    result = simulation.run_schedule(int(seed), mode=mode)
    print(f"seed {result.seed} ({mode}): n={result.n} features={sorted(result.features)}")
    print(f"heights={result.heights} events={result.events}")
    assert not result.violations, simulation.failure_report([result])
