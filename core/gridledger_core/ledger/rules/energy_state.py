"""Reading and writing the new-energy records in the state overlay (keys in ledger/schema.py).
Values are serialized deterministically so every committer writes identical bytes."""

from __future__ import annotations

from gridledger.common.v1 import energy_pb2
from gridledger_core.ledger import schema
from gridledger_core.ledger.state import StateOverlay


def _put(state: StateOverlay, key: str, message: object) -> None:
    state.put(key, message.SerializeToString(deterministic=True))  # type: ignore[attr-defined]


def get_plant(state: StateOverlay, plant: str) -> energy_pb2.PlantRecord | None:
    raw = state.get(schema.plant_key(plant))
    return energy_pb2.PlantRecord.FromString(raw) if raw is not None else None


def put_plant(state: StateOverlay, record: energy_pb2.PlantRecord) -> None:
    _put(state, schema.plant_key(record.plant), record)


def get_contract(state: StateOverlay, contract_id: str) -> energy_pb2.SupplyContractRecord | None:
    raw = state.get(schema.contract_key(contract_id))
    return energy_pb2.SupplyContractRecord.FromString(raw) if raw is not None else None


def put_contract(state: StateOverlay, record: energy_pb2.SupplyContractRecord) -> None:
    _put(state, schema.contract_key(record.contract_id), record)


def get_carbon(state: StateOverlay, account: str) -> energy_pb2.CarbonAccount:
    raw = state.get(schema.carbon_key(account))
    if raw is None:
        return energy_pb2.CarbonAccount(account=account)
    return energy_pb2.CarbonAccount.FromString(raw)


def put_carbon(state: StateOverlay, account: energy_pb2.CarbonAccount) -> None:
    _put(state, schema.carbon_key(account.account), account)
