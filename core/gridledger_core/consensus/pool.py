"""Pending transactions of one orderer, in arrival order, unique by tx id, each charged to
a member: the organisation of its creator.

Members share the pool: past half of either bound (transactions or bytes) a member adds only
within its equal share of that half, whether its transactions come from clients or from
peer orderers' forwards; and blocks are cut with the members taking turns, a different one
first at each height. So a member that floods the ordering service with valid transactions
(through its own endorser or orderer) neither shuts the others out of the pool nor makes
their next transaction wait behind its backlog."""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass
class _Entry:
    tx: bytes
    arrived: float
    member: str


class TxPool:
    """Every orderer keeps every pending transaction it has heard of (from clients or peers),
    so whichever orderer the lottery makes primary can propose it; ids leave the pool when a
    block containing them becomes final. Only validated transactions enter."""

    def __init__(self, capacity: int, max_bytes: int) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._bytes = 0
        # member -> its tx ids in arrival order; a member leaves when it has none.
        self._by_member: dict[str, OrderedDict[bytes, None]] = {}
        self._member_bytes: Counter[str] = Counter()

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

    def held_by(self, member: str) -> tuple[int, int]:
        """(transactions, bytes) of `member`'s in the pool."""
        return len(self._by_member.get(member, ())), self._member_bytes[member]

    def room_for(self, member: str, *, count: int, size: int,
                 member_count: int | None = None, member_size: int | None = None) -> bool:
        """Whether `count` more transactions of `size` bytes in all, of which `member_count`
        and `member_size` are `member`'s (default: all of them), fit: within the capacity and
        `max_bytes`, and past half of either only within `member`'s share of that half (an
        equal part for each member with transactions here, counting `member`)."""
        member_count = count if member_count is None else member_count
        member_size = size if member_size is None else member_size
        total_count, total_bytes = len(self._entries) + count, self._bytes + size
        if total_count > self.capacity or total_bytes > self.max_bytes:
            return False
        if 2 * total_count <= self.capacity and 2 * total_bytes <= self.max_bytes:
            return True
        held_count, held_bytes = self.held_by(member)
        halves = 2 * (len(self._by_member) + (member not in self._by_member))
        return ((held_count + member_count) * halves <= self.capacity
                and (held_bytes + member_size) * halves <= self.max_bytes)

    def add(self, tx_id: bytes, tx: bytes, now: float, *, force: bool = False,
            member: str = "") -> bool:
        """True when added: a new id with room for it in `member`'s share (`room_for`);
        with `force` (acknowledged transactions: their room was judged by the API), room is
        not checked."""
        if tx_id in self._entries or (
                not force and not self.room_for(member, count=1, size=len(tx))):
            return False
        self._entries[tx_id] = _Entry(tx, now, member)
        self._bytes += len(tx)
        self._by_member.setdefault(member, OrderedDict())[tx_id] = None
        self._member_bytes[member] += len(tx)
        return True

    def discard(self, tx_ids: Iterable[bytes]) -> None:
        for tx_id in tx_ids:
            entry = self._entries.pop(tx_id, None)
            if entry is None:
                continue
            self._bytes -= len(entry.tx)
            mine = self._by_member[entry.member]
            del mine[tx_id]
            self._member_bytes[entry.member] -= len(entry.tx)
            if not mine:
                del self._by_member[entry.member]
                del self._member_bytes[entry.member]

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

    def in_turns(self, first: int = 0) -> Iterator[tuple[bytes, bytes]]:
        """(tx id, tx bytes), the members taking turns, one transaction each, each member's
        in arrival order, starting with the member at `first` (modulo the members, in order
        of their arrival): how a block is cut, `first` its height, so no member is always
        first. Do not change the pool while iterating."""
        queues = [iter(ids) for ids in self._by_member.values()]
        if queues:
            start = first % len(queues)
            queues = queues[start:] + queues[:start]
        while queues:
            waiting = []
            for queue in queues:
                tx_id = next(queue, None)
                if tx_id is not None:
                    waiting.append(queue)
                    yield tx_id, self._entries[tx_id].tx
            queues = waiting
