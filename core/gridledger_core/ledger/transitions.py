"""The state-transition rules: one `process_<body>(state, ctx, body)` per transaction type.

Each checks its preconditions, raising TxInvalid with a specific code and message, and only then
writes to the state overlay. The endorser runs them to simulate and admit; committers run them
again in block order to validate and apply. Nothing else in the system decides what a
transaction does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gridledger.common.v1 import transaction_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.identity import Role
from gridledger_core.ledger import schema
from gridledger_core.ledger.checks import CheckedTransaction
from gridledger_core.ledger.errors import Code, TxInvalid
from gridledger_core.ledger.state import StateOverlay


@dataclass(frozen=True)
class TxContext:
    checked: CheckedTransaction
    genesis: Genesis
    # Unix seconds of the block being applied (for the endorser: of now). Transactions are
    # judged against it, never against a node's own clock, so every committer agrees.
    block_time: int


def _require(condition: bool, code: int, message: str) -> None:
    if not condition:
        raise TxInvalid(code, message)


def process_meter_reading(state: StateOverlay, ctx: TxContext,
                          reading: transaction_pb2.MeterReading) -> None:
    creator = ctx.checked.creator
    interval = ctx.genesis.reading_interval_seconds
    _require(creator.role in (Role.METER, Role.PLANT), Code.TX_VALIDATION_CODE_NOT_AUTHORIZED,
             f"{creator.name} is a {creator.role}; only meters and plants post readings")
    _require(reading.meter == creator.name, Code.TX_VALIDATION_CODE_NOT_AUTHORIZED,
             f"{creator.name} may not post a reading for {reading.meter!r}")
    _require(reading.interval_seconds == interval, Code.TX_VALIDATION_CODE_INVALID_BODY,
             f"interval_seconds must be {interval}, got {reading.interval_seconds}")
    _require(reading.interval_start >= 0 and reading.interval_start % interval == 0,
             Code.TX_VALIDATION_CODE_INVALID_BODY,
             f"interval_start {reading.interval_start} is not aligned to {interval} s")
    interval_end = reading.interval_start + interval
    _require(interval_end <= ctx.block_time + ctx.genesis.max_clock_skew_seconds,
             Code.TX_VALIDATION_CODE_INVALID_BODY,
             f"interval ending at {interval_end} has not ended yet")
    limit = ctx.genesis.max_interval_wh
    _require(reading.produced_wh <= limit and reading.consumed_wh <= limit,
             Code.TX_VALIDATION_CODE_INVALID_BODY,
             f"energy above the physical limit of {limit} Wh per interval")
    key = schema.reading_key(reading.meter, reading.interval_start)
    _require(state.get(key) is None, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
             f"a reading of {reading.meter} for interval {reading.interval_start} "
             "is already on the ledger")
    state.put(key, reading.SerializeToString(deterministic=True))


TRANSITIONS: dict[str, Callable[[StateOverlay, TxContext, Any], None]] = {
    "meter_reading": process_meter_reading,
}


def apply_transaction(state: StateOverlay, ctx: TxContext) -> None:
    """Run the rule of the transaction's type; on TxInvalid the caller rolls back."""
    body_name = ctx.checked.body
    process = TRANSITIONS.get(body_name)
    if process is None:
        raise TxInvalid(Code.TX_VALIDATION_CODE_MALFORMED, f"unknown transaction type {body_name}")
    process(state, ctx, getattr(ctx.checked.tx, body_name))
