"""A durable FIFO of signed envelopes in the agent's own LMDB environment.

Every append is synced before it returns, together with the agent's reading cursor, so a
reading exists exactly once whatever instant the agent is killed at. Sending is
at-least-once: an envelope sent but not yet acked when the agent dies is sent again after
the restart, and the ledger deduplicates it by tx id (same envelope, same id), so it lands
exactly once. Items leave the queue only by `ack`, in order.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

from gridledger_core.storage import LmdbStore, WriteBatch

QUEUE = b"q/"
META = b"m/"
DEAD = b"d/"
NEXT_SEQ = b"n/next"


def _seq(n: int) -> bytes:
    return n.to_bytes(8, "big")


class Outbox:
    def __init__(self, path: Path) -> None:
        self._store = LmdbStore(path, initial_map_size=16 * 1024 * 1024)
        raw = self._store.get(NEXT_SEQ)
        self._next = int.from_bytes(raw, "big") if raw else 1
        self._lock = threading.Lock()

    def append(self, payload: bytes, meta: Mapping[bytes, bytes] | None = None) -> int:
        """Queue `payload` (and update `meta` in the same transaction); returns its sequence."""
        with self._lock:
            seq = self._next
            batch = WriteBatch()
            batch.put(QUEUE + _seq(seq), payload)
            batch.put(NEXT_SEQ, _seq(seq + 1))
            for key, value in (meta or {}).items():
                batch.put(META + key, value)
            self._store.commit(batch)
            self._next = seq + 1
            return seq

    def peek(self, limit: int) -> list[tuple[int, bytes]]:
        """The oldest `limit` items, oldest first."""
        return [(int.from_bytes(k[len(QUEUE):], "big"), v)
                for k, v in self._store.scan(QUEUE, limit=limit)]

    def ack(self, seq: int) -> None:
        """Remove every item up to and including `seq`."""
        batch = WriteBatch()
        for key, _ in self._store.scan(QUEUE):
            if int.from_bytes(key[len(QUEUE):], "big") > seq:
                break
            batch.delete(key)
        if len(batch):
            self._store.commit(batch)

    def dead_letter(self, seq: int, reason: str) -> None:
        """Keep a permanently refused item, with why, out of the queue (for an operator)."""
        item = self._store.get(QUEUE + _seq(seq))
        batch = WriteBatch()
        batch.put(DEAD + _seq(seq), reason.encode() + b"\n" + (item or b""))
        batch.delete(QUEUE + _seq(seq))
        self._store.commit(batch)

    def dead_letters(self) -> list[tuple[int, str]]:
        return [(int.from_bytes(k[len(DEAD):], "big"), v.split(b"\n", 1)[0].decode())
                for k, v in self._store.scan(DEAD)]

    def pending(self) -> int:
        return sum(1 for _ in self._store.scan(QUEUE))

    def get_meta(self, key: bytes) -> bytes | None:
        return self._store.get(META + key)

    def set_meta(self, key: bytes, value: bytes) -> None:
        batch = WriteBatch()
        batch.put(META + key, value)
        self._store.commit(batch)

    def close(self) -> None:
        self._store.close()
