"""Python's cyclic garbage collector on a node: its pauses measured, its startup heap frozen.

The collector stops every thread of the process while it runs, and a collection of the oldest
generation walks every tracked object, so its pauses land directly on a node's latency (a
call in progress, a consensus round). `gridledger_gc_pause_seconds` shows them per generation.

A node's startup leaves tens of thousands of objects that live as long as the process
(modules, protobuf descriptors, the genesis, warmed caches); `freeze_startup_heap` moves them
out of the collector's sight (`gc.freeze`), so full collections walk only what the node
allocated since. Frozen objects are still freed by reference counting when dropped.
"""

from __future__ import annotations

import bisect
import gc
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

METRIC = "gridledger_gc_pause_seconds"
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
GENERATIONS = 3


class GcPauses(Collector):
    """Pause durations per generation, counted in plain lists.

    The collector's callback runs inside whatever allocation triggered the collection, so it
    must not take a lock (a prometheus_client Histogram's lock may be held by that very
    thread): it only bumps integers, with the GIL held; the histogram is built at scrape."""

    def __init__(self) -> None:
        self._counts = [[0] * (len(BUCKETS) + 1) for _ in range(GENERATIONS)]
        self._sums = [0.0] * GENERATIONS
        self._started = 0.0

    def on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        generation = info["generation"]
        self._counts[generation][bisect.bisect_left(BUCKETS, pause)] += 1
        self._sums[generation] += pause

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            METRIC,
            "Stop-the-world pauses of Python's cyclic garbage collector, by generation "
            "(2: a full collection).", labels=["generation"])
        for generation in range(GENERATIONS):
            counts = list(self._counts[generation])
            cumulative, buckets = 0, []
            for bound, count in zip((*BUCKETS, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
            family.add_metric([str(generation)], buckets, self._sums[generation])
        yield family


_installed: GcPauses | None = None


def watch_pauses() -> GcPauses:
    """Register the pause histogram and the collector's callback, once per process."""
    global _installed
    if _installed is None:
        _installed = GcPauses()
        REGISTRY.register(_installed)
        gc.callbacks.append(_installed.on_collection)
    return _installed


def freeze_startup_heap() -> None:
    """Collect once, then exempt everything alive from later collections (call when a node
    has finished starting: its long-lived objects are built)."""
    gc.collect()
    gc.freeze()
