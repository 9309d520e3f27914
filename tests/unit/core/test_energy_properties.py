"""Properties of the pure cores of contract ends and delivery attribution (issue 14 item 6):
money of an end split adds up and never exceeds the escrow; attribution, in any order of
readings, never gives contracts more than the plant produced in an interval, more than a
meter consumed, or anything for onboarding history."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gridledger.common.v1 import energy_pb2, transaction_pb2
from gridledger_core.energy.ending import end_split
from gridledger_core.energy.terms import amount_micro, max_coins
from gridledger_core.ledger import schema
from gridledger_core.ledger.rules.energy_delivery import (
    attribute_existing,
    on_meter_reading,
    on_plant_reading,
    plant_attributed_wh,
)
from gridledger_core.ledger.rules.energy_state import get_contract, put_contract
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.storage import MemoryStore

INTERVAL = 900
PLANT = "plant-1"


@st.composite
def contract_money(draw: st.DrawFn) -> tuple[int, int, int, int, int, int]:
    price = draw(st.integers(0, 2_000_000))
    energy = draw(st.integers(1, 10**7))
    coin_value = draw(st.integers(0, 10_000))
    amount = amount_micro(price, energy)
    coins = draw(st.integers(0, max_coins(amount, coin_value)))
    delivered = draw(st.integers(0, energy))
    return price, energy, coin_value, coins, delivered, amount - coins * coin_value


@settings(max_examples=500, deadline=None)
@given(contract_money())
def test_an_end_pays_at_most_the_escrow_and_splits_everything(
        case: tuple[int, int, int, int, int, int]) -> None:
    price, energy, coin_value, coins, delivered, reserved = case
    split = end_split(delivered, price, coins, coin_value, reserved)
    assert split.paid_micro + split.released_micro == reserved
    assert split.coins_to_plant + split.coins_returned == coins
    assert min(split.paid_micro, split.released_micro, split.coins_to_plant,
               split.coins_returned) >= 0
    paid_in_total = split.paid_micro + split.coins_to_plant * coin_value
    # The plant gets the delivered value, rounded up to a whole coin at most.
    assert split.value_micro <= paid_in_total < split.value_micro + max(coin_value, 1)
    if delivered == energy:  # fulfilled: exactly the contract's amount, all coins used
        assert (split.coins_to_plant, split.paid_micro) == (coins, reserved)


def _contract(state: StateOverlay, meter: str, committed_at: int, energy: int) -> None:
    cid = f"{meter}-contract"
    put_contract(state, energy_pb2.SupplyContractRecord(
        contract_id=cid, meter=meter, plant=PLANT, energy_wh=energy, delivery_start=0,
        deliver_by=10**9, committed_at=committed_at, status=energy_pb2.CONTRACT_STATUS_OPEN))
    state.put(schema.open_contract_key(meter), cid.encode())
    state.put(schema.plant_open_contract_key(PLANT, committed_at, cid), b"")


reading_event = st.tuples(st.sampled_from([PLANT, "meter-1", "meter-2", "meter-3"]),
                          st.integers(0, 3), st.integers(0, 300), st.booleans())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 400), min_size=3, max_size=3), st.lists(reading_event,
                                                                         max_size=40))
def test_attribution_conserves_energy_in_any_order(energies: list[int],
                                                   events: list[tuple[str, int, int, bool]]
                                                   ) -> None:
    state = StateOverlay(MemoryStore())
    meters = ["meter-1", "meter-2", "meter-3"]
    for i, (meter, energy) in enumerate(zip(meters, energies, strict=True)):
        _contract(state, meter, 100 + i, energy)
    live: dict[tuple[str, int], int] = {}
    for who, k, wh, history in events:
        start = k * INTERVAL
        if state.get(schema.reading_key(who, start)) is not None:
            continue  # the ledger refuses a second reading of an interval
        reading = transaction_pb2.MeterReading(
            meter=who, interval_start=start, interval_seconds=INTERVAL,
            produced_wh=wh if who == PLANT else 0, consumed_wh=0 if who == PLANT else wh)
        state.put(schema.reading_key(who, start), reading.SerializeToString())
        if history:  # onboarding history: stored and flagged, no rule runs
            state.put(schema.reading_history_key(who, start), b"")
            continue
        live[(who, start)] = wh
        (on_plant_reading if who == PLANT else on_meter_reading)(state, reading)
    total = 0
    for k in range(4):
        start = k * INTERVAL
        given_out = plant_attributed_wh(state, PLANT, start)
        assert given_out <= live.get((PLANT, start), 0)
        total += given_out
    attributed = 0
    for meter, energy in zip(meters, energies, strict=True):
        contract = get_contract(state, f"{meter}-contract")
        assert contract is not None
        assert contract.attributed_wh <= energy
        # Only intervals where both the meter's and the plant's live readings exist count.
        both = sum(wh for (who, start), wh in live.items()
                   if who == meter and (PLANT, start) in live)
        assert contract.attributed_wh <= both
        attributed += contract.attributed_wh
    assert attributed == total


def test_pairs_complete_before_the_commit_count_at_the_commit() -> None:
    """With intervals shorter than the clock skew, both readings of an interval of the new
    contract's window can already be on the ledger; the commit attributes them (once)."""
    state = StateOverlay(MemoryStore())
    for who, wh in ((PLANT, 50), ("meter-1", 30)):
        for k in (0, 1, 2):
            state.put(schema.reading_key(who, k * INTERVAL), transaction_pb2.MeterReading(
                meter=who, interval_start=k * INTERVAL, interval_seconds=INTERVAL,
                produced_wh=wh if who == PLANT else 0,
                consumed_wh=0 if who == PLANT else wh).SerializeToString())
    state.put(schema.reading_history_key("meter-1", 0), b"")  # history never counts
    _contract(state, "meter-1", 100, 1000)
    contract = get_contract(state, "meter-1-contract")
    assert contract is not None
    attribute_existing(state, contract, until=2 * INTERVAL, interval_s=INTERVAL)
    assert get_contract(state, "meter-1-contract").attributed_wh == 30  # type: ignore[union-attr]
    assert [plant_attributed_wh(state, PLANT, k * INTERVAL) for k in (0, 1, 2)] == [0, 30, 0]
