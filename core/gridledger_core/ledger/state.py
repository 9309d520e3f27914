"""State access for transitions: a write overlay over the committed store.

Transitions read through the overlay (so later transactions in a block see earlier ones'
writes) and write only into it; the ledger turns the overlay into one atomic batch. A
transaction that fails is rolled back to the savepoint taken before it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from sortedcontainers import SortedList

from gridledger_core.crypto import sha256
from gridledger_core.ledger import schema
from gridledger_core.storage import KeyValueStore

_TOMBSTONE = None
_ABSENT = object()  # in the undo journal: the key had no write before the savepoint
_UNREAD = object()  # in the kept reads: the snapshot was not asked for the key yet


class StateOverlay:
    """Writes are kept in a dict (point reads) and their keys in a sorted list, so a prefix
    scan visits only the written keys under its prefix: a block's overlay holds every earlier
    transaction's writes, and filtering all of them on each scan made a block's cost grow with
    the square of its size. For the same reason a savepoint is an undo journal of the keys
    written since, not a copy of every write."""

    def __init__(self, store: KeyValueStore, *, snapshot: bool = False) -> None:
        """`snapshot`: `store` is one committed state that cannot change while this overlay
        lives (a block's read transaction), so what it answered is kept and not asked again.
        A block's transactions read the same keys over and over (the endorser's revocation
        keys for each of its signatures: 6.4 of 16.3 store reads per transaction in a
        batch-API run's blocks). What is kept is bounded as the writes are: by what the block's
        transactions read. Over a live store (queries) every read goes to the store."""
        self._store = store
        self._writes: dict[str, bytes | None] = {}
        self._written = SortedList()
        self._undo: dict[str, object] | None = None
        self._stored: dict[str, bytes | None] | None = {} if snapshot else None

    def get(self, key: str) -> bytes | None:
        if key in self._writes:
            return self._writes[key]
        stored = self._stored
        if stored is None:
            return self._store.get(schema.state_key(key))
        value = stored.get(key, _UNREAD)
        if value is _UNREAD:
            value = stored[key] = self._store.get(schema.state_key(key))
        return value  # type: ignore[return-value]

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """`get` for many keys: this overlay's writes, the rest from one store snapshot."""
        writes, found = self._writes, self._stored
        if found is None:
            found = {}
        missing = [k for k in keys if k not in writes and k not in found]
        if missing:
            found.update(zip(missing, self._store.get_many([schema.state_key(k)
                                                            for k in missing]), strict=True))
        return [writes[k] if k in writes else found[k] for k in keys]

    def put(self, key: str, value: bytes) -> None:
        self._write(key, value)

    def delete(self, key: str) -> None:
        self._write(key, _TOMBSTONE)

    def _write(self, key: str, value: bytes | None) -> None:
        previous = self._writes.get(key, _ABSENT)
        if self._undo is not None and key not in self._undo:
            self._undo[key] = previous
        if previous is _ABSENT:
            self._written.add(key)
        self._writes[key] = value

    def _pending(self, prefix: str) -> dict[str, bytes | None]:
        """This overlay's writes under `prefix`: the written keys from `prefix` on, in order,
        until the first that does not start with it (keys with a prefix are contiguous)."""
        pending: dict[str, bytes | None] = {}
        for key in self._written.irange(minimum=prefix):
            if not key.startswith(prefix):
                break
            pending[key] = self._writes[key]
        return pending

    def scan(self, prefix: str, limit: int | None = None) -> Iterator[tuple[str, bytes]]:
        """Committed entries merged with this overlay's writes, in key order."""
        pending = self._pending(prefix)
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
        """Start a journal of what the next writes replace; `rollback` undoes them."""
        self._undo = {}

    def rollback(self) -> None:
        assert self._undo is not None, "rollback without savepoint"
        for key, previous in self._undo.items():
            if previous is _ABSENT:
                del self._writes[key]
                self._written.remove(key)
            else:
                self._writes[key] = previous  # type: ignore[assignment]
        self._undo = None

    def changes(self) -> list[tuple[str, bytes | None]]:
        return [(key, self._writes[key]) for key in self._written]


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
