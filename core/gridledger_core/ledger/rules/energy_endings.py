"""Rules that end a supply contract (issue 14 item 6), each paying pro rata (energy/ending.py):

    trade_end        the meter, once the attributed energy covers the contract ("fulfilled")
    close_contract   the meter, the plant or a settlement account of the initiating
                     organisation, once deliver_by + the readings submission window has
                     passed, so no reading that could still count is missing ("expired")
    cancel_contract  the meter or the plant, with the other party's signed consent
                     ("cancelled")

The end pays the plant from the meter's escrow and the contract's coins for the energy
attributed to it, releases the rest of the escrow, returns unused coins, gives the undelivered
energy back to the plant's remaining energy and frees the meter's open-contract slot. Carbon
coins are issued afterwards on the delivered energy only (energy_carbon.py); a contract that
delivered too little to earn a coin gets none.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from gridledger.common.v1 import energy_pb2, settlement_pb2
from gridledger_core.energy.ending import end_split
from gridledger_core.energy.terms import CANCEL_FORMAT
from gridledger_core.identity import Role
from gridledger_core.ledger import schema
from gridledger_core.ledger.checks import open_signed
from gridledger_core.ledger.errors import Code, ContractStatus, TxInvalid
from gridledger_core.ledger.rules import money
from gridledger_core.ledger.rules.bounds import require_uint64
from gridledger_core.ledger.rules.energy_state import (
    get_carbon,
    get_contract,
    get_plant,
    put_carbon,
    put_contract,
    put_plant,
)
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.ledger.transitions_base import TxContext, require

Status = ContractStatus
CONFLICT = Code.TX_VALIDATION_CODE_STATE_CONFLICT


def _open_contract(state: StateOverlay, contract_id: str) -> energy_pb2.SupplyContractRecord:
    contract = get_contract(state, contract_id)
    require(contract is not None, CONFLICT, f"no contract {contract_id!r} on the ledger")
    assert contract is not None
    require(contract.status == Status.CONTRACT_STATUS_OPEN, CONFLICT,
            f"contract {contract.contract_id} already ended ({contract.end_reason or 'ended'}) "
            f"in {contract.trade_end_tx_id}")
    return contract


def _end(state: StateOverlay, ctx: TxContext, contract: energy_pb2.SupplyContractRecord,
         reason: str) -> None:
    """Pay, release and free everything for `contract` ending now (checks, then writes)."""
    delivered = contract.attributed_wh
    try:
        split = end_split(delivered, contract.price_micro_per_kwh, contract.coins_paid,
                          contract.coin_value_micro, contract.reserved_micro)
    except ValueError as exc:  # cannot happen for a record this rule set wrote (ending.py)
        raise TxInvalid(CONFLICT, f"contract {contract.contract_id}: {exc}") from exc
    plant = get_plant(state, contract.plant)
    assert plant is not None, "a contract's plant record is never deleted"
    undelivered = contract.energy_wh - delivered
    require_uint64(plant.delivered_wh + delivered, CONFLICT, f"{plant.plant}'s delivered energy")
    require_uint64(plant.remaining_wh + undelivered, CONFLICT, f"{plant.plant}'s remaining energy")
    payee = get_carbon(state, plant.plant)
    require_uint64(payee.coins + split.coins_to_plant, CONFLICT, f"{plant.plant}'s coins")
    require_uint64(payee.received + split.coins_to_plant, CONFLICT,
                   f"{plant.plant}'s received coins")
    meter_coins = get_carbon(state, contract.meter)
    require_uint64(meter_coins.coins + split.coins_returned, CONFLICT, f"{contract.meter}'s coins")

    money.transfer(state, ctx, contract.meter, plant.plant, split.paid_micro,
                   settlement_pb2.ENTRY_KIND_CONTRACT, contract.contract_id,
                   f"supply contract, {delivered} Wh {reason}", from_reserved=True)
    money.release(state, ctx, contract.meter, split.released_micro, contract.contract_id)
    if split.coins_to_plant:
        payee.coins += split.coins_to_plant
        payee.received += split.coins_to_plant
        put_carbon(state, payee)
    if split.coins_returned:
        meter_coins = get_carbon(state, contract.meter)
        meter_coins.coins += split.coins_returned
        meter_coins.spent -= split.coins_returned
        put_carbon(state, meter_coins)
    plant.delivered_wh += delivered
    plant.remaining_wh += undelivered
    plant.open_contracts -= 1
    put_plant(state, plant)
    state.delete(schema.open_contract_key(contract.meter))
    state.delete(schema.plant_open_contract_key(contract.plant, contract.committed_at,
                                                contract.contract_id))
    contract.status = Status.CONTRACT_STATUS_ENDED
    contract.delivered_wh = delivered
    contract.undelivered_wh = undelivered
    contract.paid_micro = split.paid_micro
    contract.released_micro = split.released_micro
    contract.reserved_micro = 0
    contract.coins_to_plant = split.coins_to_plant
    contract.coins_returned = split.coins_returned
    contract.end_reason = reason
    contract.ended_by = ctx.checked.creator.name
    contract.trade_end_tx_id = ctx.checked.tx_id
    contract.ended_at = ctx.block_time
    put_contract(state, contract)


def process_trade_end(state: StateOverlay, ctx: TxContext, body: energy_pb2.TradeEnd) -> None:
    creator = ctx.checked.creator
    contract = get_contract(state, body.contract_id)
    require(contract is not None, CONFLICT, f"no contract {body.contract_id!r} on the ledger")
    assert contract is not None
    require(creator.name == contract.meter and creator.role == Role.METER,
            Code.TX_VALIDATION_CODE_NOT_AUTHORIZED,
            f"only the contract's meter {contract.meter} ends it, not {creator.name}")
    contract = _open_contract(state, body.contract_id)
    require(contract.attributed_wh >= contract.energy_wh, CONFLICT,
            f"contract {contract.contract_id} is not fulfilled: {contract.attributed_wh} of "
            f"{contract.energy_wh} Wh delivered (matched by the plant's production)")
    require(body.delivered_wh == contract.energy_wh, Code.TX_VALIDATION_CODE_INVALID_BODY,
            f"delivered_wh must be the contract's {contract.energy_wh} Wh")
    _end(state, ctx, contract, "fulfilled")


def _party(contract: energy_pb2.SupplyContractRecord, name: str, role: Role) -> bool:
    return ((role == Role.METER and name == contract.meter)
            or (role == Role.PLANT and name == contract.plant))


def process_close_contract(state: StateOverlay, ctx: TxContext,
                           body: settlement_pb2.CloseContract) -> None:
    creator = ctx.checked.creator
    contract = _open_contract(state, body.contract_id)
    settlement = (creator.org == ctx.genesis.initiating_organization
                  and creator.role == Role.SETTLEMENT)
    require(_party(contract, creator.name, creator.role) or settlement,
            Code.TX_VALIDATION_CODE_NOT_AUTHORIZED,
            f"{creator.name} ({creator.role}) is neither party of contract "
            f"{contract.contract_id} nor a settlement account of "
            f"{ctx.genesis.initiating_organization}")
    closable = contract.deliver_by + ctx.genesis.reading_submission_window_seconds
    require(ctx.block_time > closable, CONFLICT,
            f"contract {contract.contract_id} delivers until {contract.deliver_by}; it can be "
            f"closed after {closable} (deliver_by + the readings submission window), the block "
            f"is at {ctx.block_time}")
    _end(state, ctx, contract, "expired")


def _consent(body: settlement_pb2.CancelContract,
             ctx: TxContext) -> tuple[settlement_pb2.ContractCancelConsent, str, Role]:
    signer = open_signed(body.consent, ctx.signers, "cancel consent",
                         Code.TX_VALIDATION_CODE_UNKNOWN_SIGNER,
                         Code.TX_VALIDATION_CODE_BAD_SIGNATURE)
    consent = settlement_pb2.ContractCancelConsent()
    try:
        consent.ParseFromString(body.consent.payload)
    except DecodeError as exc:
        raise TxInvalid(Code.TX_VALIDATION_CODE_MALFORMED,
                        "cancel consent is not a ContractCancelConsent") from exc
    require(consent.format == CANCEL_FORMAT, Code.TX_VALIDATION_CODE_MALFORMED,
            f"cancel consent format is {consent.format!r}, not {CANCEL_FORMAT}")
    return consent, signer.name, signer.role


def process_cancel_contract(state: StateOverlay, ctx: TxContext,
                            body: settlement_pb2.CancelContract) -> None:
    creator = ctx.checked.creator
    contract = _open_contract(state, body.contract_id)
    require(_party(contract, creator.name, creator.role), Code.TX_VALIDATION_CODE_NOT_AUTHORIZED,
            f"only contract {contract.contract_id}'s meter or plant cancels it, not "
            f"{creator.name}")
    consent, signer, role = _consent(body, ctx)
    other = contract.plant if creator.role == Role.METER else contract.meter
    require(signer == other and _party(contract, signer, role),
            Code.TX_VALIDATION_CODE_NOT_AUTHORIZED,
            f"the consent must be signed by the other party {other}, not {signer}")
    require(consent.contract_id == contract.contract_id, Code.TX_VALIDATION_CODE_INVALID_BODY,
            f"the consent is for contract {consent.contract_id!r}, not {contract.contract_id}")
    require(ctx.block_time <= consent.expires_at, Code.TX_VALIDATION_CODE_INVALID_BODY,
            f"the consent expired at {consent.expires_at}")
    _end(state, ctx, contract, "cancelled")
