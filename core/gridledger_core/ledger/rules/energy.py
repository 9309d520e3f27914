"""New-energy trading rules (seed 002, issue 6), one module per concern:

    plant_announcement   energy_plants.py     a plant's price, shortfalls, remaining energy
    supply_contract      energy_contracts.py  meter-countersigned plant terms; uses up energy
    trade_end            energy_contracts.py  the meter ends a fulfilled contract
    carbon_coin_issue    energy_carbon.py     the initiating organisation's coins + certificate
"""

from __future__ import annotations

from gridledger_core.ledger.rules.energy_carbon import process_carbon_coin_issue
from gridledger_core.ledger.rules.energy_contracts import process_supply_contract, process_trade_end
from gridledger_core.ledger.rules.energy_plants import process_plant_announcement

RULES = {
    "plant_announcement": process_plant_announcement,
    "supply_contract": process_supply_contract,
    "trade_end": process_trade_end,
    "carbon_coin_issue": process_carbon_coin_issue,
}
