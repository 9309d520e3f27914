"""Rules of meter readings."""

from __future__ import annotations

from gridledger.common.v1 import transaction_pb2
from gridledger_core.identity import Role
from gridledger_core.ledger import schema
from gridledger_core.ledger.errors import Code
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.ledger.transitions_base import TxContext, require


def process_meter_reading(state: StateOverlay, ctx: TxContext,
                          reading: transaction_pb2.MeterReading) -> None:
    creator = ctx.checked.creator
    interval = ctx.genesis.reading_interval_seconds
    require(creator.role in (Role.METER, Role.PLANT), Code.TX_VALIDATION_CODE_NOT_AUTHORIZED,
            f"{creator.name} is a {creator.role}; only meters and plants post readings")
    require(reading.meter == creator.name, Code.TX_VALIDATION_CODE_NOT_AUTHORIZED,
            f"{creator.name} may not post a reading for {reading.meter!r}")
    require(reading.interval_seconds == interval, Code.TX_VALIDATION_CODE_INVALID_BODY,
            f"interval_seconds must be {interval}, got {reading.interval_seconds}")
    require(reading.interval_start >= 0 and reading.interval_start % interval == 0,
            Code.TX_VALIDATION_CODE_INVALID_BODY,
            f"interval_start {reading.interval_start} is not aligned to {interval} s")
    interval_end = reading.interval_start + interval
    require(interval_end <= ctx.block_time + ctx.genesis.max_clock_skew_seconds,
            Code.TX_VALIDATION_CODE_INVALID_BODY,
            f"interval ending at {interval_end} has not ended yet")
    limit = ctx.genesis.max_interval_wh
    require(reading.produced_wh <= limit and reading.consumed_wh <= limit,
            Code.TX_VALIDATION_CODE_INVALID_BODY,
            f"energy above the physical limit of {limit} Wh per interval")
    key = schema.reading_key(reading.meter, reading.interval_start)
    require(state.get(key) is None, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
            f"a reading of {reading.meter} for interval {reading.interval_start} "
             "is already on the ledger")
    state.put(key, reading.SerializeToString(deterministic=True))


RULES = {"meter_reading": process_meter_reading}
