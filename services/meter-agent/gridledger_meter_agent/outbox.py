"""A durable, bounded FIFO of signed envelopes in the agent's own LMDB environment.

Every append is synced before it returns, together with the agent's reading cursor, so a
reading exists exactly once whatever instant the agent is killed at. An item stays in the
queue until the sender has seen it committed VALID (`remove`), or moves to the dead-letter
list on a definite invalid verdict (`dead_letter`); being acknowledged by the endorser is
not enough. Sending is at-least-once: anything still queued when the agent restarts is sent
again, and the ledger deduplicates it by tx id (same envelope, same id).

The queue holds at most `capacity` items, counting those sent and awaiting their commit:
`has_room()` is the reader's back-pressure (it stops creating readings and keeps its cursor,
so nothing is dropped: the intervals are read later from the cumulative counters). The
dead-letter list keeps the newest `dead_capacity` entries.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

from gridledger_core.storage import LmdbStore, WriteBatch
from gridledger_core.storage.lmdb_store import DEFAULT_MAP_SIZE

QUEUE = b"q/"
META = b"m/"
DEAD = b"d/"
NEXT_SEQ = b"n/next"
DEFAULT_CAPACITY = 10_000  # readings: 104 days of 15-minute intervals
DEFAULT_DEAD_CAPACITY = 10_000


def _seq(n: int) -> bytes:
    return n.to_bytes(8, "big")


class Outbox:
    def __init__(self, path: Path, capacity: int = DEFAULT_CAPACITY,
                 dead_capacity: int = DEFAULT_DEAD_CAPACITY,
                 map_size: int = DEFAULT_MAP_SIZE) -> None:
        self._store = LmdbStore(path, map_size=map_size)
        raw = self._store.get(NEXT_SEQ)
        self._next = int.from_bytes(raw, "big") if raw else 1
        self._lock = threading.Lock()
        self.capacity = capacity
        self._dead_capacity = dead_capacity
        self._pending = sum(1 for _ in self._store.scan(QUEUE))
        self._dead = sum(1 for _ in self._store.scan(DEAD))

    def has_room(self) -> bool:
        return self._pending < self.capacity

    def append(self, payload: bytes, meta: Mapping[bytes, bytes] | None = None) -> int:
        """Queue `payload` (and update `meta` in the same transaction); returns its sequence.
        The caller checks `has_room()` first: the bound is back-pressure, not a refusal."""
        with self._lock:
            seq = self._next
            batch = WriteBatch()
            batch.put(QUEUE + _seq(seq), payload)
            batch.put(NEXT_SEQ, _seq(seq + 1))
            for key, value in (meta or {}).items():
                batch.put(META + key, value)
            self._store.commit(batch)
            self._next = seq + 1
            self._pending += 1
            return seq

    def peek(self, limit: int) -> list[tuple[int, bytes]]:
        """The oldest `limit` items, oldest first."""
        return [(int.from_bytes(k[len(QUEUE):], "big"), v)
                for k, v in self._store.scan(QUEUE, limit=limit)]

    def remove(self, seq: int) -> None:
        """The item was seen committed VALID: it is done."""
        with self._lock:
            if self._store.get(QUEUE + _seq(seq)) is None:
                return
            batch = WriteBatch()
            batch.delete(QUEUE + _seq(seq))
            self._store.commit(batch)
            self._pending -= 1

    def ack(self, seq: int) -> None:
        """Remove every item up to and including `seq`."""
        with self._lock:
            batch = WriteBatch()
            for key, _ in self._store.scan(QUEUE):
                if int.from_bytes(key[len(QUEUE):], "big") > seq:
                    break
                batch.delete(key)
            if len(batch):
                self._store.commit(batch)
                self._pending -= len(batch)

    def dead_letter(self, seq: int, reason: str) -> None:
        """Keep a definitely invalid item, with why, out of the queue (for an operator)."""
        with self._lock:
            item = self._store.get(QUEUE + _seq(seq))
            if item is None:
                return
            batch = WriteBatch()
            batch.put(DEAD + _seq(seq), reason.encode() + b"\n" + item)
            batch.delete(QUEUE + _seq(seq))
            excess = self._dead + 1 - self._dead_capacity
            if excess > 0:  # bounded: the oldest dead letters go
                for key, _ in self._store.scan(DEAD, limit=excess):
                    batch.delete(key)
            self._store.commit(batch)
            self._pending -= 1
            self._dead += 1 - max(0, excess)

    def dead_letters(self) -> list[tuple[int, str]]:
        return [(int.from_bytes(k[len(DEAD):], "big"), v.split(b"\n", 1)[0].decode())
                for k, v in self._store.scan(DEAD)]

    def pending(self) -> int:
        """Items queued: not yet sent, or sent and awaiting their commit."""
        return self._pending

    def get_meta(self, key: bytes) -> bytes | None:
        return self._store.get(META + key)

    def set_meta(self, key: bytes, value: bytes) -> None:
        batch = WriteBatch()
        batch.put(META + key, value)
        self._store.commit(batch)

    def close(self) -> None:
        self._store.close()
