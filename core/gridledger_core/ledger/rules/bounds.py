"""Range checks for the integers rules store. State records hold uint64 fields (and 8-byte
running totals); protobuf raises ValueError when a value outside 0..2^64-1 is assigned, which
on a commit path is an unexpected exception. So every sum or product a rule stores is checked
first and refused with a validation code that names it."""

from __future__ import annotations

from gridledger_core.ledger.transitions_base import require

UINT64_MAX = 2**64 - 1


def require_uint64(value: int, code: int, what: str) -> int:
    """`value` if it fits a uint64, else TxInvalid(`code`) naming `what`; returns it."""
    require(0 <= value <= UINT64_MAX, code,
            f"{what} would be {value}, outside the uint64 range 0..{UINT64_MAX}")
    return value
