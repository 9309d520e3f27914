"""Delivery timing of supply contracts. Attribution itself is a ledger rule
(ledger/rules/energy_delivery.py): per interval, bounded by the meter's consumption and by
the plant's own production not already attributed to another contract."""

from __future__ import annotations


def first_boundary_at_or_after(t: int, interval: int) -> int:
    return -(-t // interval) * interval
