"""The garbage collector's pauses as a histogram (gc_pauses.py)."""

from __future__ import annotations

import gc

from prometheus_client import REGISTRY

from gridledger_core.gc_pauses import BUCKETS, watch_pauses


def _sample(name: str, generation: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"gridledger_gc_pause_seconds_{name}",
                                     {"generation": generation, **labels}) or 0.0


def test_every_collection_is_counted_by_generation_once() -> None:
    assert watch_pauses() is watch_pauses()  # one callback per process
    full_before, young_before = _sample("count", "2"), _sample("count", "0")
    gc.collect()
    gc.collect(0)
    assert _sample("count", "2") >= full_before + 1  # (automatic ones may add to both)
    assert _sample("count", "0") >= young_before + 1
    assert _sample("sum", "2") > 0
    # cumulative buckets: never falling, ending in +Inf equal to the count
    bounds = [*(str(b) for b in BUCKETS), "+Inf"]
    cumulative = [_sample("bucket", "2", le=bound) for bound in bounds]
    assert cumulative == sorted(cumulative)
    assert cumulative[-1] == _sample("count", "2")
