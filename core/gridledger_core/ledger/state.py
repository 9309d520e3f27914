"""State access for transitions: a write overlay over the committed store.

Transitions read through the overlay (so later transactions in a block see earlier ones'
writes) and write only into it; the ledger turns the overlay into one atomic batch. A
transaction that fails is rolled back to the savepoint taken before it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from gridledger_core.crypto import sha256
from gridledger_core.ledger import schema
from gridledger_core.storage import KeyValueStore

_TOMBSTONE = None


class StateOverlay:
    def __init__(self, store: KeyValueStore) -> None:
        self._store = store
        self._writes: dict[str, bytes | None] = {}
        self._savepoint: dict[str, bytes | None] | None = None

    def get(self, key: str) -> bytes | None:
        if key in self._writes:
            return self._writes[key]
        return self._store.get(schema.state_key(key))

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """`get` for many keys: this overlay's writes, the rest from one store snapshot."""
        missing = [k for k in keys if k not in self._writes]
        stored = dict(zip(missing, self._store.get_many([schema.state_key(k) for k in missing]),
                          strict=True))
        return [self._writes[k] if k in self._writes else stored[k] for k in keys]

    def put(self, key: str, value: bytes) -> None:
        self._writes[key] = value

    def delete(self, key: str) -> None:
        self._writes[key] = _TOMBSTONE

    def scan(self, prefix: str, limit: int | None = None) -> Iterator[tuple[str, bytes]]:
        """Committed entries merged with this overlay's writes, in key order."""
        pending = {k: v for k, v in self._writes.items() if k.startswith(prefix)}
        # With a limit, the store need not be read past limit + len(pending) entries: at
        # most len(pending) of those can be deleted here, so the first `limit` live merged
        # keys are among them (a rule asking "is there any?" costs one read, not the prefix).
        stored = self._store.scan(schema.state_key(prefix),
                                  limit=None if limit is None else limit + len(pending))
        merged: dict[str, bytes | None] = {k[len(schema.STATE):].decode(): v for k, v in stored}
        merged.update(pending)
        count = 0
        for key in sorted(merged):
            value = merged[key]
            if value is None:
                continue
            yield key, value
            count += 1
            if limit is not None and count >= limit:
                return

    def savepoint(self) -> None:
        self._savepoint = dict(self._writes)

    def rollback(self) -> None:
        assert self._savepoint is not None, "rollback without savepoint"
        self._writes = self._savepoint
        self._savepoint = None

    def changes(self) -> list[tuple[str, bytes | None]]:
        return sorted(self._writes.items())


def next_state_root(previous_root: bytes, block_hash: bytes,
                    changes: list[tuple[str, bytes | None]]) -> bytes:
    """A hash chain over every block's state changes, so two committers that applied the same
    blocks under the same rules have the same root, and any divergence shows at the first
    block where it happened. Keys and values are length-prefixed so no two change sets
    encode alike."""
    parts = [b"gridledger/state/v1\x00", previous_root, block_hash]
    for key, value in changes:
        k = key.encode()
        parts.append(len(k).to_bytes(4, "big") + k)
        if value is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(len(value).to_bytes(4, "big") + value)
    return sha256(b"".join(parts))
