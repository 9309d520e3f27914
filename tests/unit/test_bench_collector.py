"""bench/collector.py: the load generator's collector off while it times, restored after."""

from __future__ import annotations

import gc
import weakref

import pytest

from bench.collector import collector_paused


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_no_collection_runs_inside_and_the_heap_is_set_aside() -> None:
    collections_before = sum(s["collections"] for s in gc.get_stats())
    with collector_paused():
        assert not gc.isenabled()
        assert gc.get_freeze_count() > 0  # what was alive is out of a collection's walk
        garbage = _cycle()
        # Far past generation 0's threshold: an enabled collector would have run.
        kept = [[i] for i in range(gc.get_threshold()[0] * 20)]
        assert garbage() is not None
        assert sum(s["collections"] for s in gc.get_stats()) == collections_before + 1
        del kept
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert garbage() is None  # the cycle left inside is freed by the next collection


def test_the_collector_is_restored_after_an_error_and_left_off_if_it_was() -> None:
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("a run that failed")
    assert gc.isenabled() and gc.get_freeze_count() == 0
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_heap_the_process_froze_itself_stays_frozen() -> None:
    gc.freeze()  # as a node does at start (gridledger_core/gc_pauses.py)
    try:
        frozen = gc.get_freeze_count()
        with collector_paused():
            pass
        assert gc.get_freeze_count() >= frozen and gc.isenabled()
    finally:
        gc.unfreeze()
