from __future__ import annotations

import bisect
import contextlib
import threading
from collections.abc import Iterator, Sequence

from gridledger_core.storage.base import WriteBatch, prefix_end


class MemoryStore:
    """An in-memory KeyValueStore: a dict plus a sorted key list for ordered scans."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._keys: list[bytes] = []
        self._lock = threading.Lock()

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        with self._lock:
            return [self._data.get(key) for key in keys]

    def scan(self, prefix: bytes, start: bytes | None = None, limit: int | None = None,
             reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        with self._lock:
            if reverse:
                hi = bisect.bisect_right(self._keys, start) if start is not None else \
                    bisect.bisect_left(self._keys, prefix_end(prefix))
                lo = bisect.bisect_left(self._keys, prefix)
                keys = self._keys[lo:hi][::-1]
            else:
                lo = bisect.bisect_left(self._keys, start if start is not None else prefix)
                hi = bisect.bisect_left(self._keys, prefix_end(prefix))
                keys = self._keys[lo:hi]
            if limit is not None:
                keys = keys[:limit]
            items = [(k, self._data[k]) for k in keys]
        yield from items

    def commit(self, batch: WriteBatch) -> None:
        with self._lock:
            for key, value in batch.operations.items():
                if value is None:
                    if key in self._data:
                        del self._data[key]
                        self._keys.pop(bisect.bisect_left(self._keys, key))
                else:
                    if key not in self._data:
                        bisect.insort(self._keys, key)
                    self._data[key] = value

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[MemoryStore]:
        """The store itself: without isolation from a commit in another thread (a test
        backend; the ledger commits only after its block's view has ended)."""
        yield self

    def close(self) -> None:
        pass

