"""A bounded, thread-safe least-recently-used map for per-process memos of pure functions.

The endorser answers from many gRPC threads, so every access takes one lock; the memoised
work (VRF verification, a forecast) is done outside it, and two threads that miss the same
key at once both compute the same value, which is harmless for a pure function.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Lru(Generic[K, V]):
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> tuple[bool, V | None]:
        """(True, value) for a hit, which becomes the most recently used; (False, None) else.
        A pair, not a sentinel, because None is itself a value worth remembering."""
        with self._lock:
            try:
                value = self._entries[key]
            except KeyError:
                return False, None
            self._entries.move_to_end(key)
            return True, value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
