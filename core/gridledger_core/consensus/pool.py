"""Pending transactions of one orderer, in arrival order, unique by tx id."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass
class _Entry:
    tx: bytes
    arrived: float


class TxPool:
    """Every orderer keeps every pending transaction it has heard of (from clients or peers),
    so whichever orderer the lottery makes primary can propose it; ids leave the pool when a
    block containing them becomes final. Only validated transactions enter."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, tx_id: object) -> bool:
        return tx_id in self._entries

    @property
    def total_bytes(self) -> int:
        return self._bytes

    @property
    def full(self) -> bool:
        return len(self._entries) >= self.capacity

    def add(self, tx_id: bytes, tx: bytes, now: float, *, force: bool = False) -> bool:
        """True when added (new id and room left; with `force`, room is not checked)."""
        if tx_id in self._entries or (self.full and not force):
            return False
        self._entries[tx_id] = _Entry(tx, now)
        self._bytes += len(tx)
        return True

    def discard(self, tx_ids: Iterable[bytes]) -> None:
        for tx_id in tx_ids:
            entry = self._entries.pop(tx_id, None)
            if entry is not None:
                self._bytes -= len(entry.tx)

    def get(self, tx_id: bytes) -> bytes | None:
        entry = self._entries.get(tx_id)
        return None if entry is None else entry.tx

    def oldest_arrival(self) -> float | None:
        for entry in self._entries.values():
            return entry.arrived
        return None

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """(tx id, tx bytes) in arrival order."""
        for tx_id, entry in self._entries.items():
            yield tx_id, entry.tx
