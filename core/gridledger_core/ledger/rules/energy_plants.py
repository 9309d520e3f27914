"""Rule of plant announcements (claim 2 of seed 002), and the plant's reliability evidence
kept from its own live readings (issue 14 item 7, plants/evidence.py)."""

from __future__ import annotations

from gridledger.common.v1 import energy_pb2, transaction_pb2
from gridledger_core.identity import Role
from gridledger_core.ledger.errors import Code
from gridledger_core.ledger.rules.bounds import require_uint64
from gridledger_core.ledger.rules.energy_state import get_plant, put_plant
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.ledger.transitions_base import TxContext, require
from gridledger_core.plants.evidence import add_windows, reading_windows
from gridledger_core.plants.reliability import DEFAULT_PARAMS, shortfall_union

MAX_WINDOWS = 2000
MAX_PANELS = 64
MAX_ID_LENGTH = 64


def _check_windows(windows: list[tuple[int, int]], ctx: TxContext) -> None:
    require(len(windows) <= MAX_WINDOWS, Code.TX_VALIDATION_CODE_INVALID_BODY,
            f"more than {MAX_WINDOWS} shortfall windows")
    latest = ctx.block_time + ctx.genesis.max_clock_skew_seconds
    previous_end = None
    for start, end in windows:
        require(0 <= start < end, Code.TX_VALIDATION_CODE_INVALID_BODY,
                f"shortfall window [{start}, {end}) is empty or negative")
        require(end <= latest, Code.TX_VALIDATION_CODE_INVALID_BODY,
                f"shortfall window [{start}, {end}) ends in the future")
        require(previous_end is None or start >= previous_end, Code.TX_VALIDATION_CODE_INVALID_BODY,
                "shortfall windows must be sorted and must not overlap")
        previous_end = end


def process_plant_announcement(state: StateOverlay, ctx: TxContext,
                               body: energy_pb2.PlantAnnouncement) -> None:
    creator = ctx.checked.creator
    require(creator.role == Role.PLANT, Code.TX_VALIDATION_CODE_NOT_AUTHORIZED,
            f"{creator.name} is a {creator.role}; only plants announce")
    require(body.plant == creator.name, Code.TX_VALIDATION_CODE_NOT_AUTHORIZED,
            f"{creator.name} may not announce for {body.plant!r}")
    market = ctx.genesis.market
    require(market.price_min <= body.price_micro_per_kwh <= market.price_max,
            Code.TX_VALIDATION_CODE_INVALID_BODY,
            f"price {body.price_micro_per_kwh} outside [{market.price_min}, {market.price_max}]")
    panels = list(body.pv_panel_ids)
    require(0 < len(panels) <= MAX_PANELS and len(set(panels)) == len(panels)
            and all(0 < len(p) <= MAX_ID_LENGTH for p in panels),
            Code.TX_VALIDATION_CODE_INVALID_BODY,
            f"pv_panel_ids must be 1 to {MAX_PANELS} distinct non-empty ids")
    require(body.threshold_w > 0, Code.TX_VALIDATION_CODE_INVALID_BODY,
            "threshold_w must be positive: shortfalls are measured against it")
    windows = [(w.start, w.end) for w in body.shortfall_windows]
    _check_windows(windows, ctx)
    record = get_plant(state, body.plant) or energy_pb2.PlantRecord(
        plant=body.plant, organization=creator.org)
    # The record keeps its owner organisation: only that organisation's plant rewrites it.
    require(record.organization == creator.org, Code.TX_VALIDATION_CODE_NOT_AUTHORIZED,
            f"plant {body.plant} belongs to {record.organization}, not {creator.org}")
    require(body.contracted_wh == record.contracted_wh, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
            f"stale announcement: it accounts for {body.contracted_wh} Wh contracted, the "
            f"ledger has {record.contracted_wh} Wh; announce again")
    # Keep the union with earlier announcements inside the reliability horizon, so a plant
    # cannot make a shortfall disappear by leaving it out of its next announcement.
    known = [(w.start, w.end) for w in record.shortfall_windows]
    merged = shortfall_union(known + windows, ctx.block_time + ctx.genesis.max_clock_skew_seconds,
                             DEFAULT_PARAMS.horizon_s)
    del record.shortfall_windows[:]
    record.shortfall_windows.extend(energy_pb2.ShortfallWindow(start=s, end=e) for s, e in merged)
    record.price_micro_per_kwh = body.price_micro_per_kwh
    record.threshold_w = body.threshold_w
    record.remaining_wh = body.remaining_wh
    del record.pv_panel_ids[:]
    record.pv_panel_ids.extend(panels)
    record.coin_value_micro = body.coin_value_micro
    record.endpoint = body.endpoint
    record.announced_at = ctx.block_time
    record.announcement_tx_id = ctx.checked.tx_id
    record.announcements += 1
    put_plant(state, record)


def record_plant_reading(state: StateOverlay, ctx: TxContext, plant: energy_pb2.PlantRecord,
                         reading: transaction_pb2.MeterReading) -> None:
    """Keep the shortfall windows a live reading of the plant shows (evidence.py): below its
    announced threshold, or after a gap since its previous reading. Windows only accumulate."""
    require_uint64(plant.live_readings + 1, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
                   f"{plant.plant}'s reading count")
    new = reading_windows(reading.interval_start, reading.interval_seconds, reading.produced_wh,
                          plant.threshold_w, plant.last_reading_end)
    if new:
        known = [(w.start, w.end) for w in plant.measured_shortfall_windows]
        merged = add_windows(known, new, ctx.block_time + ctx.genesis.max_clock_skew_seconds)
        del plant.measured_shortfall_windows[:]
        plant.measured_shortfall_windows.extend(
            energy_pb2.ShortfallWindow(start=s, end=e) for s, e in merged)
    plant.live_readings += 1
    plant.last_reading_end = max(plant.last_reading_end,
                                 reading.interval_start + reading.interval_seconds)
    put_plant(state, plant)
