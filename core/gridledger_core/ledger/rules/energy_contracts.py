"""Rules of supply contracts (claim 1's contract, issue 6 item 7) and trade ends (claim 4)."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from gridledger.common.v1 import energy_pb2
from gridledger_core.energy.delivery import attributed_wh, first_boundary_at_or_after
from gridledger_core.energy.terms import (
    MIN_TERMS_NONCE,
    TERMS_FORMAT,
    amount_micro,
    contract_id,
    max_coins,
)
from gridledger_core.identity import Identity, Role
from gridledger_core.ledger import schema
from gridledger_core.ledger.checks import open_signed
from gridledger_core.ledger.errors import Code, TxInvalid
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

Status = energy_pb2.ContractStatus


def _plant_signer(body: energy_pb2.SupplyContract, ctx: TxContext) -> Identity:
    return open_signed(body.plant_terms, ctx.signers, "plant terms",
                       Code.TX_VALIDATION_CODE_UNKNOWN_SIGNER,
                       Code.TX_VALIDATION_CODE_BAD_SIGNATURE)


def _terms(payload: bytes) -> energy_pb2.SupplyContractTerms:
    terms = energy_pb2.SupplyContractTerms()
    try:
        terms.ParseFromString(payload)
    except DecodeError as exc:
        raise TxInvalid(Code.TX_VALIDATION_CODE_MALFORMED,
                        "plant terms are not a SupplyContractTerms") from exc
    require(terms.format == TERMS_FORMAT, Code.TX_VALIDATION_CODE_MALFORMED,
            f"plant terms format is {terms.format!r}, not {TERMS_FORMAT}")
    return terms


def process_supply_contract(state: StateOverlay, ctx: TxContext,
                            body: energy_pb2.SupplyContract) -> None:
    meter = ctx.checked.creator
    require(meter.role == Role.METER, Code.TX_VALIDATION_CODE_NOT_AUTHORIZED,
            f"{meter.name} is a {meter.role}; only meters buy under supply contracts")
    signer = _plant_signer(body, ctx)
    terms = _terms(body.plant_terms.payload)
    require(signer.role == Role.PLANT and signer.name == terms.plant,
            Code.TX_VALIDATION_CODE_NOT_AUTHORIZED,
            f"terms for plant {terms.plant!r} are signed by {signer.name} ({signer.role})")
    require(terms.meter == meter.name, Code.TX_VALIDATION_CODE_NOT_AUTHORIZED,
            f"terms are for meter {terms.meter!r}, not {meter.name}")
    cid = contract_id(body.plant_terms.payload)
    require(get_contract(state, cid) is None, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
            f"contract {cid} is already on the ledger")
    require(terms.energy_wh > 0, Code.TX_VALIDATION_CODE_INVALID_BODY,
            "a contract must buy some energy")
    require(len(terms.nonce) >= MIN_TERMS_NONCE, Code.TX_VALIDATION_CODE_INVALID_BODY,
            f"terms nonce must be at least {MIN_TERMS_NONCE} bytes")
    require(ctx.block_time <= terms.expires_at, Code.TX_VALIDATION_CODE_INVALID_BODY,
            f"the plant's offer expired at {terms.expires_at}")
    amount = require_uint64(amount_micro(terms.price_micro_per_kwh, terms.energy_wh),
                            Code.TX_VALIDATION_CODE_INVALID_BODY, "the contract's amount")
    require(terms.coins_paid <= max_coins(amount, terms.coin_value_micro),
            Code.TX_VALIDATION_CODE_INVALID_BODY,
            f"{terms.coins_paid} coins at {terms.coin_value_micro} would pay more than the "
            f"contract's {amount}")
    plant = get_plant(state, terms.plant)
    require(plant is not None, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
            f"plant {terms.plant} has not announced")
    assert plant is not None
    require(plant.organization == signer.org, Code.TX_VALIDATION_CODE_NOT_AUTHORIZED,
            f"plant {plant.plant} belongs to {plant.organization}, its terms are signed by "
            f"{signer.org}")
    require(terms.pv_panel_id in plant.pv_panel_ids, Code.TX_VALIDATION_CODE_INVALID_BODY,
            f"PV panel {terms.pv_panel_id!r} is not one {terms.plant} announced")
    require(terms.energy_wh <= plant.remaining_wh, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
            f"contract for {terms.energy_wh} Wh exceeds {terms.plant}'s remaining energy of "
            f"{plant.remaining_wh} Wh")
    open_key = schema.open_contract_key(meter.name)
    current = state.get(open_key)
    require(current is None, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
            f"{meter.name} already has open contract {(current or b'').decode()}; "
            "one open contract per meter, so every reading is attributed once")
    account = get_carbon(state, meter.name)
    require(terms.coins_paid <= account.coins, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
            f"{meter.name} has {account.coins} carbon coins, cannot pay {terms.coins_paid}")
    # Totals that only grow: a plant may announce any remaining energy again and again, so
    # its contracted total (and the coins it receives) can reach the uint64 limit.
    conflict = Code.TX_VALIDATION_CODE_STATE_CONFLICT
    require_uint64(plant.contracted_wh + terms.energy_wh, conflict,
                   f"{plant.plant}'s contracted energy")
    require_uint64(plant.contracts + 1, conflict, f"{plant.plant}'s contract count")
    if terms.coins_paid:
        payee_account = get_carbon(state, plant.plant)
        require_uint64(account.spent + terms.coins_paid, conflict,
                       f"{meter.name}'s spent coins")
        require_uint64(payee_account.coins + terms.coins_paid, conflict,
                       f"{plant.plant}'s coins")
        require_uint64(payee_account.received + terms.coins_paid, conflict,
                       f"{plant.plant}'s received coins")

    if terms.coins_paid:
        account.coins -= terms.coins_paid
        account.spent += terms.coins_paid
        put_carbon(state, account)
        payee = get_carbon(state, plant.plant)
        payee.coins += terms.coins_paid
        payee.received += terms.coins_paid
        put_carbon(state, payee)
    plant.remaining_wh -= terms.energy_wh
    plant.contracted_wh += terms.energy_wh
    plant.contracts += 1
    put_plant(state, plant)
    state.put(open_key, cid.encode())
    put_contract(state, energy_pb2.SupplyContractRecord(
        contract_id=cid, meter=meter.name, plant=plant.plant,
        price_micro_per_kwh=terms.price_micro_per_kwh, energy_wh=terms.energy_wh,
        pv_panel_id=terms.pv_panel_id, plant_remaining_wh=plant.remaining_wh,
        plant_stated_remaining_wh=terms.plant_remaining_wh,
        delivery_start=first_boundary_at_or_after(ctx.block_time,
                                                  ctx.genesis.reading_interval_seconds),
        committed_at=ctx.block_time, contract_tx_id=ctx.checked.tx_id, amount_micro=amount,
        coins_paid=terms.coins_paid, coin_value_micro=terms.coin_value_micro,
        money_due_micro=amount - terms.coins_paid * terms.coin_value_micro,
        status=Status.CONTRACT_STATUS_OPEN, plant_terms=body.plant_terms))


def contract_attributed_wh(state: StateOverlay, contract: energy_pb2.SupplyContractRecord,
                           ctx: TxContext) -> int:
    return attributed_wh(state.get, contract.meter, contract.delivery_start, contract.energy_wh,
                         ctx.block_time + ctx.genesis.max_clock_skew_seconds,
                         ctx.genesis.reading_interval_seconds)


def process_trade_end(state: StateOverlay, ctx: TxContext, body: energy_pb2.TradeEnd) -> None:
    creator = ctx.checked.creator
    contract = get_contract(state, body.contract_id)
    require(contract is not None, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
            f"no contract {body.contract_id!r} on the ledger")
    assert contract is not None
    require(creator.name == contract.meter and creator.role == Role.METER,
            Code.TX_VALIDATION_CODE_NOT_AUTHORIZED,
            f"only the contract's meter {contract.meter} ends it, not {creator.name}")
    require(contract.status == Status.CONTRACT_STATUS_OPEN, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
            f"contract {contract.contract_id} already ended in {contract.trade_end_tx_id}")
    delivered = contract_attributed_wh(state, contract, ctx)
    require(delivered >= contract.energy_wh, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
            f"contract {contract.contract_id} is not fulfilled: {delivered} of "
            f"{contract.energy_wh} Wh delivered")
    require(body.delivered_wh == contract.energy_wh, Code.TX_VALIDATION_CODE_INVALID_BODY,
            f"delivered_wh must be the contract's {contract.energy_wh} Wh")
    contract.status = Status.CONTRACT_STATUS_ENDED
    contract.delivered_wh = contract.energy_wh
    contract.trade_end_tx_id = ctx.checked.tx_id
    contract.ended_at = ctx.block_time
    put_contract(state, contract)
    state.delete(schema.open_contract_key(contract.meter))
    plant = get_plant(state, contract.plant)
    assert plant is not None, "a contract's plant record is never deleted"
    require_uint64(plant.delivered_wh + contract.delivered_wh,
                   Code.TX_VALIDATION_CODE_STATE_CONFLICT, f"{plant.plant}'s delivered energy")
    plant.delivered_wh += contract.delivered_wh
    put_plant(state, plant)
