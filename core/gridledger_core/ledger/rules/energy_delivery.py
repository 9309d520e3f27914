"""Attributing delivered energy to supply contracts, reading by reading (issue 14).

Energy counts towards a contract only where both sides' *live* readings show it: for an
interval inside the contract's delivery window ([delivery_start, deliver_by)), the contract
is attributed

    min(meter's consumed_wh,
        plant's produced_wh - what that interval's production already gave other contracts,
        what the contract still lacks)

at the moment the second of the two readings is committed (each reading key is written once,
so each (contract, interval) pair is attributed exactly once, in block order). When the
plant's reading comes second, its open contracts are served first-committed first. Readings
may be posted up to the clock skew early, so a pair can be complete already when a contract
commits: those few intervals are attributed at the commit (`attribute_existing`). So per
plant and interval, attributed Wh <= produced Wh (energy is conserved), a meter cannot claim
delivery its plant never produced, and onboarding history (reading-history/...) never counts.
Every replica sees the same block order, so every replica attributes the same.
"""

from __future__ import annotations

from gridledger.common.v1 import energy_pb2, transaction_pb2
from gridledger_core.ledger import schema
from gridledger_core.ledger.rules.energy_state import get_contract, put_contract
from gridledger_core.ledger.state import StateOverlay

# A plant's reading visits each of its open contracts, so their number is bounded (checked
# when a contract is committed).
MAX_OPEN_CONTRACTS_PER_PLANT = 256


def live_reading(state: StateOverlay, meter: str,
                 interval_start: int) -> transaction_pb2.MeterReading | None:
    """The meter's reading of that interval, unless it came as onboarding history."""
    raw = state.get(schema.reading_key(meter, interval_start))
    if raw is None or state.get(schema.reading_history_key(meter, interval_start)) is not None:
        return None
    return transaction_pb2.MeterReading.FromString(raw)


def plant_attributed_wh(state: StateOverlay, plant: str, interval_start: int) -> int:
    raw = state.get(schema.plant_attributed_key(plant, interval_start))
    return int.from_bytes(raw, "big") if raw is not None else 0


def in_window(contract: energy_pb2.SupplyContractRecord, interval_start: int,
              interval_s: int) -> bool:
    return (contract.delivery_start <= interval_start
            and interval_start + interval_s <= contract.deliver_by)


def _attribute(state: StateOverlay, contract: energy_pb2.SupplyContractRecord,
               consumed_wh: int, produced_wh: int, interval_start: int) -> int:
    """Attribute what the interval allows to `contract` (saved); returns the Wh attributed."""
    already = plant_attributed_wh(state, contract.plant, interval_start)
    wh = min(consumed_wh, produced_wh - already, contract.energy_wh - contract.attributed_wh)
    if wh <= 0:
        return 0
    # Both sums stay below values already stored (produced_wh, energy_wh): no range check.
    contract.attributed_wh += wh
    put_contract(state, contract)
    state.put(schema.plant_attributed_key(contract.plant, interval_start),
              (already + wh).to_bytes(8, "big"))
    return wh


def on_meter_reading(state: StateOverlay, reading: transaction_pb2.MeterReading) -> None:
    """A live meter reading: attribute it to the meter's open contract if the plant's reading
    of the interval is already there."""
    raw = state.get(schema.open_contract_key(reading.meter))
    if raw is None:
        return
    contract = get_contract(state, raw.decode())
    if contract is None or not in_window(contract, reading.interval_start,
                                         reading.interval_seconds):
        return
    produced = live_reading(state, contract.plant, reading.interval_start)
    if produced is not None:
        _attribute(state, contract, reading.consumed_wh, produced.produced_wh,
                   reading.interval_start)


def on_plant_reading(state: StateOverlay, reading: transaction_pb2.MeterReading) -> None:
    """A live plant reading: serve the plant's open contracts whose meters already posted the
    interval, first committed first, until the interval's production is used up."""
    keys = [key for key, _ in state.scan(schema.plant_open_contract_prefix(reading.meter),
                                         limit=MAX_OPEN_CONTRACTS_PER_PLANT)]
    start = reading.interval_start
    for key in keys:
        if plant_attributed_wh(state, reading.meter, start) >= reading.produced_wh:
            return
        contract = get_contract(state, key.rsplit("/", 1)[1])
        if contract is None or not in_window(contract, start, reading.interval_seconds):
            continue
        consumed = live_reading(state, contract.meter, start)
        if consumed is not None:
            _attribute(state, contract, consumed.consumed_wh, reading.produced_wh, start)


def attribute_existing(state: StateOverlay, contract: energy_pb2.SupplyContractRecord,
                       until: int, interval_s: int) -> None:
    """At commit: attribute the intervals of the window, ending by `until` (block time + clock
    skew, so at most skew / interval of them), whose two readings are already there."""
    start = contract.delivery_start
    while start + interval_s <= min(until, contract.deliver_by):
        consumed = live_reading(state, contract.meter, start)
        produced = live_reading(state, contract.plant, start)
        if consumed is not None and produced is not None:
            _attribute(state, contract, consumed.consumed_wh, produced.produced_wh, start)
        start += interval_s
