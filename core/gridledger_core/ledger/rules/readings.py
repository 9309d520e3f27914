"""Rules of meter readings: live readings (with their submission deadline) and onboarding
history (issue 14 item 4).

A live reading is accepted until its interval's end plus genesis
`readings.submission_window_seconds` (block time). Older readings enter only as onboarding
history, a HistoryReadings transaction of the meter (or plant) itself, and only while it has
never traded: no pre-sale order, trade or statement of its own and no supply contract. History
readings are stored like live ones (so forecasts use them: they are admitted only before the
first order, so they cannot be backfilled to inflate an allowance) and flagged with a
reading-history/... key, so delivery (supply contracts) and plant reliability never count them.
"""

from __future__ import annotations

from gridledger.common.v1 import settlement_pb2, transaction_pb2
from gridledger_core.identity import Role
from gridledger_core.ledger import schema
from gridledger_core.ledger.errors import Code
from gridledger_core.ledger.rules.energy_delivery import on_meter_reading, on_plant_reading
from gridledger_core.ledger.rules.energy_plants import record_plant_reading
from gridledger_core.ledger.rules.energy_state import get_plant
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.ledger.transitions_base import TxContext, require

READINGS_DEADLINE = "readings_deadline"
# The one reading verdict a clock difference between a meter and the block can cause: the
# meter-agent retries it (and dead-letters every other verdict), so the name is a contract.
READING_NOT_ENDED = "reading_not_ended"
ONBOARDING_CLOSED = "onboarding_closed"
HISTORY_DAYS = 7


def _require_device(ctx: TxContext, what: str) -> str:
    creator = ctx.checked.creator
    require(creator.role in (Role.METER, Role.PLANT), Code.TX_VALIDATION_CODE_NOT_AUTHORIZED,
            f"{creator.name} is a {creator.role}; only meters and plants post {what}")
    return creator.name


def _check_interval(ctx: TxContext, start: int, produced_wh: int, consumed_wh: int) -> None:
    interval = ctx.genesis.reading_interval_seconds
    require(start >= 0 and start % interval == 0, Code.TX_VALIDATION_CODE_INVALID_BODY,
            f"interval_start {start} is not aligned to {interval} s")
    limit = ctx.genesis.max_interval_wh
    require(produced_wh <= limit and consumed_wh <= limit, Code.TX_VALIDATION_CODE_INVALID_BODY,
            f"energy above the physical limit of {limit} Wh per interval")


def process_meter_reading(state: StateOverlay, ctx: TxContext,
                          reading: transaction_pb2.MeterReading) -> None:
    creator = ctx.checked.creator
    interval = ctx.genesis.reading_interval_seconds
    _require_device(ctx, "readings")
    require(reading.meter == creator.name, Code.TX_VALIDATION_CODE_NOT_AUTHORIZED,
            f"{creator.name} may not post a reading for {reading.meter!r}")
    require(reading.interval_seconds == interval, Code.TX_VALIDATION_CODE_INVALID_BODY,
            f"interval_seconds must be {interval}, got {reading.interval_seconds}")
    _check_interval(ctx, reading.interval_start, reading.produced_wh, reading.consumed_wh)
    interval_end = reading.interval_start + interval
    require(interval_end <= ctx.block_time + ctx.genesis.max_clock_skew_seconds,
            Code.TX_VALIDATION_CODE_INVALID_BODY,
            f"{READING_NOT_ENDED}: interval ending at {interval_end} has not ended yet")
    window = ctx.genesis.reading_submission_window_seconds
    require(ctx.block_time <= interval_end + window, Code.TX_VALIDATION_CODE_INVALID_BODY,
            f"{READINGS_DEADLINE}: the reading of the interval ending at {interval_end} was due "
            f"by {interval_end + window} (interval end + {window} s), the block is at "
            f"{ctx.block_time}; older readings only as onboarding history before trading")
    key = schema.reading_key(reading.meter, reading.interval_start)
    require(state.get(key) is None, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
            f"a reading of {reading.meter} for interval {reading.interval_start} "
             "is already on the ledger")
    plant = get_plant(state, creator.name) if creator.role == Role.PLANT else None
    if plant is not None:
        record_plant_reading(state, ctx, plant, reading)  # checks first, then writes
    state.put(key, reading.SerializeToString(deterministic=True))
    if creator.role == Role.METER:
        on_meter_reading(state, reading)
    elif plant is not None:
        on_plant_reading(state, reading)


def _has_key(state: StateOverlay, prefix: str) -> bool:
    return next(iter(state.scan(prefix, limit=1)), None) is not None


def onboarding_closed_reason(state: StateOverlay, account: str) -> str | None:
    """Why `account` may no longer post history (it has traded), or None."""
    if _has_key(state, schema.order_meter_prefix(account)):
        return f"{account} has placed a pre-sale order"
    if _has_key(state, schema.trade_meter_prefix(account)):
        return f"{account} has traded"
    if _has_key(state, schema.statement_meter_prefix(account)):
        return f"{account} has a settlement statement"
    if state.get(schema.contracted_key(account)) is not None:
        return f"{account} has had a supply contract"
    plant = get_plant(state, account)
    if plant is not None and plant.contracts > 0:
        return f"plant {account} has supply contracts"
    return None


def max_history_readings(interval_s: int) -> int:
    return max(1, HISTORY_DAYS * 86_400 // interval_s)


def process_history_readings(state: StateOverlay, ctx: TxContext,
                             body: settlement_pb2.HistoryReadings) -> None:
    account = _require_device(ctx, "onboarding history")
    interval = ctx.genesis.reading_interval_seconds
    count, most = len(body.readings), max_history_readings(interval)
    require(0 < count <= most, Code.TX_VALIDATION_CODE_INVALID_BODY,
            f"onboarding history carries 1 to {most} readings ({HISTORY_DAYS} days of "
            f"{interval} s intervals) per transaction, not {count}")
    reason = onboarding_closed_reason(state, account)
    require(reason is None, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
            f"{ONBOARDING_CLOSED}: {reason}; history is admitted only before trading")
    for entry in body.readings:
        _check_interval(ctx, entry.interval_start, entry.produced_wh, entry.consumed_wh)
        # Ended by the block itself, no clock skew: every history interval then lies before
        # any slot the account can later trade (orders are for slots after their block).
        end = entry.interval_start + interval
        require(end <= ctx.block_time, Code.TX_VALIDATION_CODE_INVALID_BODY,
                f"{READING_NOT_ENDED}: history interval ending at {end} has not ended by the "
                f"block ({ctx.block_time})")
        key = schema.reading_key(account, entry.interval_start)
        require(state.get(key) is None, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
                f"a reading of {account} for interval {entry.interval_start} is already on the "
                "ledger (or twice in this history)")
        reading = transaction_pb2.MeterReading(
            meter=account, interval_start=entry.interval_start, interval_seconds=interval,
            produced_wh=entry.produced_wh, consumed_wh=entry.consumed_wh)
        state.put(key, reading.SerializeToString(deterministic=True))
        state.put(schema.reading_history_key(account, entry.interval_start), b"")


RULES = {"meter_reading": process_meter_reading,
         "history_readings": process_history_readings}
