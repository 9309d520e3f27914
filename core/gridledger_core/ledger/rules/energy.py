"""New-energy trading rules (seed 002, issues 6 and 14), one module per concern:

    plant_announcement   energy_plants.py     a plant's price, shortfalls, remaining energy
    supply_contract      energy_contracts.py  meter-countersigned plant terms; reserves money
    trade_end            energy_endings.py    the meter ends a fulfilled contract
    close_contract       energy_endings.py    a contract past its deadline ends pro rata
    cancel_contract      energy_endings.py    both parties end a contract pro rata
    carbon_coin_issue    energy_carbon.py     the initiating organisation's coins + certificate
    redeem_coins         energy_carbon.py     a holder sells coins to the treasury

Delivery attribution (energy_delivery.py) and the plant's reliability evidence
(energy_plants.py) run inside the reading rule (readings.py).
"""

from __future__ import annotations

from gridledger_core.ledger.rules.energy_carbon import (
    process_carbon_coin_issue,
    process_redeem_coins,
)
from gridledger_core.ledger.rules.energy_contracts import process_supply_contract
from gridledger_core.ledger.rules.energy_endings import (
    process_cancel_contract,
    process_close_contract,
    process_trade_end,
)
from gridledger_core.ledger.rules.energy_plants import process_plant_announcement

RULES = {
    "plant_announcement": process_plant_announcement,
    "supply_contract": process_supply_contract,
    "trade_end": process_trade_end,
    "close_contract": process_close_contract,
    "cancel_contract": process_cancel_contract,
    "carbon_coin_issue": process_carbon_coin_issue,
    "redeem_coins": process_redeem_coins,
}
