"""Readings deadline and onboarding history (issue 14 item 4). Every refusal is checked for
its code and for changing nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from energy_world import INTERVAL, VALID, WINDOW, World, new_world
from ledger_helpers import reading
from market_helpers import BUY, NOW, SLOT, history, option, place, terms

from gridledger.common.v1 import envelope_pb2, settlement_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.ledger import schema
from gridledger_core.ledger.errors import Code

CONFLICT = Code.TX_VALIDATION_CODE_STATE_CONFLICT
INVALID = Code.TX_VALIDATION_CODE_INVALID_BODY


@pytest.fixture()
def world(energy_genesis: Genesis, energy_dir: Path) -> World:
    return new_world(energy_genesis, energy_dir)


def entries(starts: list[int], consumed: int = 300) -> settlement_pb2.HistoryReadings:
    return settlement_pb2.HistoryReadings(readings=[
        settlement_pb2.MeterReadingEntry(interval_start=s, produced_wh=0, consumed_wh=consumed)
        for s in starts])


def week_before(end: int) -> list[int]:
    """Every interval of the 7 days before `end` (aligned)."""
    last = end // INTERVAL * INTERVAL
    return [last - k * INTERVAL for k in range(7 * 86400 // INTERVAL, 0, -1)]


def test_live_reading_is_accepted_only_until_interval_end_plus_the_window(world: World) -> None:
    start = world.now // INTERVAL * INTERVAL - 10 * INTERVAL
    end = start + INTERVAL
    world.now = end + WINDOW + 1
    world.refused("meter-1", "meter_reading", reading("meter-1", start), INVALID,
                  f"readings_deadline: the reading of the interval ending at {end} was due by "
                  f"{end + WINDOW}")
    world.now = end + WINDOW  # the last second it is due
    code, message, _ = world.submit("meter-1", "meter_reading", reading("meter-1", start))
    assert code == VALID, message


def test_onboarding_history_is_admitted_before_trading_and_flagged(world: World) -> None:
    starts = week_before(world.now - 86400)
    world.ok("meter-1", "history_readings", entries(starts))
    for s in (starts[0], starts[-1]):
        assert world.ledger.get_state(schema.reading_key("meter-1", s)) is not None
        assert world.ledger.get_state(schema.reading_history_key("meter-1", s)) == b""
    # A live reading never is.
    live = world.now // INTERVAL * INTERVAL - INTERVAL
    world.ok("meter-1", "meter_reading", reading("meter-1", live))
    assert world.ledger.get_state(schema.reading_history_key("meter-1", live)) is None


def test_backfilling_a_week_right_before_ordering_is_refused_and_changes_nothing(
        world: World) -> None:
    """The issue's scenario: a meter orders on one day of history, then tries to add a week of
    large same-hour deficits to inflate its buy allowance. Neither as live readings (late) nor
    as history (it has traded) does anything reach the ledger."""
    world.now = NOW
    endorser = world.who("endorser-1")
    meter = world.who("meter-1")
    for raw in history(meter, endorser, SLOT, produced=0, consumed=1500, days=1):
        code, message, _ = world.commit_envelope(
            envelope_pb2.EndorsedTransaction.FromString(raw).envelope)
        assert code == VALID, message
    order = place(meter, option(endorser, terms("meter-1", BUY, 250_000, 1000)))
    code, message, _ = world.commit_envelope(order)
    assert code == VALID, message
    older = [SLOT - d * 86400 + q * INTERVAL for d in range(2, 9) for q in range(4)]
    world.refused("meter-1", "history_readings", entries(older, consumed=50_000), CONFLICT,
                  "onboarding_closed: meter-1 has placed a pre-sale order")
    world.refused("meter-1", "meter_reading", reading("meter-1", older[0], 0, 50_000), INVALID,
                  "readings_deadline")
    # A meter that has not traded may still bring its history.
    world.ok("meter-2", "history_readings", entries(older))


@pytest.mark.parametrize("case, code, text", [
    ("too_many", INVALID, "1 to 672 readings"),
    ("empty", INVALID, "1 to 672 readings"),
    ("misaligned", INVALID, "is not aligned"),
    ("not_ended_by_the_block", INVALID, "has not ended by the block"),
    ("twice_in_one", CONFLICT, "twice in this history"),
    ("already_live", CONFLICT, "already on the ledger"),
    ("above_physical_limit", INVALID, "physical limit"),
    ("by_an_issuer", Code.TX_VALIDATION_CODE_NOT_AUTHORIZED, "only meters and plants"),
    ("after_a_contract", CONFLICT, "onboarding_closed: meter-1 has had a supply contract"),
    ("plant_with_contracts", CONFLICT, "onboarding_closed: plant plant-1 has supply contracts"),
])
def test_bad_history_is_refused(world: World, case: str, code: int, text: str) -> None:
    signer = "meter-1"
    last = world.now // INTERVAL * INTERVAL - INTERVAL
    body = entries([last - 3 * INTERVAL, last - 2 * INTERVAL])
    if case == "too_many":
        body = entries([*week_before(last), last])
    elif case == "empty":
        body = entries([])
    elif case == "misaligned":
        body = entries([last + 1])
    elif case == "not_ended_by_the_block":
        # Live readings may be up to the clock skew early; history may not.
        body = entries([world.now // INTERVAL * INTERVAL])
        world.now = world.now // INTERVAL * INTERVAL + INTERVAL - 1
    elif case == "twice_in_one":
        body = entries([last, last])
    elif case == "already_live":
        world.ok("meter-1", "meter_reading", reading("meter-1", last - 2 * INTERVAL))
    elif case == "above_physical_limit":
        body = entries([last], consumed=world.genesis.max_interval_wh + 1)
    elif case == "by_an_issuer":
        signer = "issuer"
    elif case in ("after_a_contract", "plant_with_contracts"):
        world.open_contract()
        signer = "meter-1" if case == "after_a_contract" else "plant-1"
    world.refused(signer, "history_readings", body, code, text)
