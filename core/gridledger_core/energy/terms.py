"""Supply-contract terms: their format marker, the contract id and the contract's price."""

from __future__ import annotations

from gridledger.common.v1 import energy_pb2, settlement_pb2
from gridledger_core.crypto import new_nonce, sha256

TERMS_FORMAT = "gridledger/supply-contract-terms/v1"
CANCEL_FORMAT = "gridledger/contract-cancel/v1"
MIN_TERMS_NONCE = 16


def contract_id(terms_payload: bytes) -> str:
    """The id of a contract: hex SHA-256 of the plant's exact signed terms bytes, so the id
    binds every term and the same signed terms can never make two contracts."""
    return sha256(terms_payload).hex()


def amount_micro(price_micro_per_kwh: int, energy_wh: int) -> int:
    """What `energy_wh` costs at `price_micro_per_kwh`, micro-units, rounded down."""
    return price_micro_per_kwh * energy_wh // 1000


def max_coins(amount: int, coin_value_micro: int) -> int:
    """Most coins that can pay a contract worth `amount` (coins never pay more than it)."""
    return amount // coin_value_micro if coin_value_micro > 0 else 0


def coins_to_plant(value_micro: int, coins_paid: int, coin_value_micro: int) -> int:
    """Of the coins a contract holds, those that pay `value_micro` of delivered energy: coins
    count first, rounded up to whole coins (the plant gains less than one coin's value), never
    more than were paid."""
    if coins_paid == 0 or coin_value_micro == 0:
        return 0
    return min(coins_paid, -(-value_micro // coin_value_micro))


def new_terms(*, meter: str, plant: str, price_micro_per_kwh: int, energy_wh: int,
              pv_panel_id: str, plant_remaining_wh: int, coins_paid: int, coin_value_micro: int,
              expires_at: int, deliver_by: int) -> energy_pb2.SupplyContractTerms:
    return energy_pb2.SupplyContractTerms(
        format=TERMS_FORMAT, meter=meter, plant=plant, price_micro_per_kwh=price_micro_per_kwh,
        energy_wh=energy_wh, pv_panel_id=pv_panel_id, plant_remaining_wh=plant_remaining_wh,
        coins_paid=coins_paid, coin_value_micro=coin_value_micro, expires_at=expires_at,
        nonce=new_nonce(), deliver_by=deliver_by)


def cancel_consent(contract_id: str, expires_at: int) -> settlement_pb2.ContractCancelConsent:
    """What the other party signs to agree to cancel `contract_id`."""
    return settlement_pb2.ContractCancelConsent(format=CANCEL_FORMAT, contract_id=contract_id,
                                                expires_at=expires_at)
