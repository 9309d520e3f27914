"""The load generator's own garbage collector kept out of a timed run.

Python's cyclic collector stops every thread of its process while it runs, and a full
collection walks every object the process holds. In `bench.matching_rpc` the client is the
harness itself, holding what `make bench`'s earlier suites and the run's own prepared
requests left: measured, a full collection in the client during a run took 10-45 ms, and
every call whose answer arrived meanwhile counted the pause as the endorser's latency (the
calls of that stretch late by the pause and falling off one millisecond per call, while a
separate process's health checks of the endorser saw no stall). `timeit` keeps the
collector off while it times for the same reason.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Collect once, set everything alive aside (`gc.freeze`) and keep the collector off
    until the block ends; then restore it as it was. Reference counting still frees what
    the block drops; only cycles wait for the collector's next run.

    `gc.unfreeze` returns every frozen object, so a process that had frozen its own heap
    before (as the nodes do at start) keeps it frozen, with what this block froze."""
    enabled = gc.isenabled()
    frozen_before = gc.get_freeze_count()
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        if not frozen_before:
            gc.unfreeze()
        if enabled:
            gc.enable()
