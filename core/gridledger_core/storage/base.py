from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Protocol


class WriteBatch:
    """Puts and deletes applied all together or not at all. Later operations on one key win."""

    def __init__(self) -> None:
        self.operations: dict[bytes, bytes | None] = {}

    def put(self, key: bytes, value: bytes) -> None:
        self.operations[key] = value

    def delete(self, key: bytes) -> None:
        self.operations[key] = None

    def __len__(self) -> int:
        return len(self.operations)


class KeyValueStore(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """The values of `keys` (None where absent), in order, read in one snapshot."""
        ...

    def scan(self, prefix: bytes, start: bytes | None = None, limit: int | None = None,
             reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """Key/value pairs whose key starts with `prefix`, in key order (or reverse order).

        `start`, when given, is the first key to return (the last one when reversing), and
        must itself start with `prefix`."""
        ...

    def commit(self, batch: WriteBatch) -> None:
        """Apply the whole batch atomically and durably."""
        ...

    def snapshot(self) -> AbstractContextManager[KeyValueStore]:
        """The reads of this store for many reads (a block's execution), ending with the
        `with` block: in LMDB one read transaction, so one consistent moment and one begin
        instead of one per read; not for writing."""
        ...

    def close(self) -> None: ...


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key that starts with `prefix`."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\xff" * (len(prefix) + 64)
    return stripped[:-1] + bytes([stripped[-1] + 1])
