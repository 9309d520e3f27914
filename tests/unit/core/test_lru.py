"""The bounded LRU map behind the process memos (VRF verification, forecasts)."""

from __future__ import annotations

import threading

import pytest

from gridledger_core.lru import Lru


def test_least_recently_used_goes_first_and_none_is_a_value() -> None:
    lru: Lru[str, int | None] = Lru(2)
    lru.put("a", None)
    lru.put("b", 2)
    assert lru.get("a") == (True, None)  # a hit, whose value is None; "a" is now recent
    lru.put("c", 3)
    assert lru.get("b") == (False, None)
    assert lru.get("a") == (True, None)
    assert lru.get("c") == (True, 3)
    assert len(lru) == 2
    lru.clear()
    assert len(lru) == 0


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Lru(0)


def test_concurrent_use_stays_bounded_and_consistent() -> None:
    lru: Lru[int, int] = Lru(64)
    errors: list[str] = []

    def work(offset: int) -> None:
        for i in range(2_000):
            key = (i * 7 + offset) % 200
            lru.put(key, key * key)
            hit, value = lru.get(key)
            if hit and value != key * key:
                errors.append(f"{key} -> {value}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(lru) == 64
