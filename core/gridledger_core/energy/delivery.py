"""How delivered energy is attributed to a supply contract, from the meter's readings.

Rule (deterministic, the same on every node): energy delivered under a contract is the sum of
`consumed_wh` (imported energy) of the meter's committed readings whose interval starts at or
after the contract's `delivery_start` (the first interval boundary at or after the block that
committed it), capped at the contract's energy. A meter has at most one open contract, so no
reading is ever attributed to two contracts. Readings that arrive late (from an outbox after
an outage) still count once they are committed.
"""

from __future__ import annotations

from collections.abc import Callable

from gridledger.common.v1 import transaction_pb2
from gridledger_core.ledger import schema


def first_boundary_at_or_after(t: int, interval: int) -> int:
    return -(-t // interval) * interval


def attributed_wh(get: Callable[[str], bytes | None], meter: str, delivery_start: int,
                  energy_wh: int, until: int, interval: int) -> int:
    """Wh attributed to a contract from readings of intervals ending by `until`.

    Looks each interval up by key, so the cost is the contract's age in intervals, not the
    meter's whole history; it stops as soon as the contract is covered."""
    total = 0
    start = delivery_start
    while start + interval <= until and total < energy_wh:
        raw = get(schema.reading_key(meter, start))
        if raw is not None:
            total += transaction_pb2.MeterReading.FromString(raw).consumed_wh
        start += interval
    return min(total, energy_wh)
