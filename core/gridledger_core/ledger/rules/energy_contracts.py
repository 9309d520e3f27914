"""Rule of committing a supply contract (claim 1's contract, issue 6 item 7, issue 14 item 6).

At commit the meter's money due (amount - coins' value) is reserved from its balance
(refused `insufficient_funds` if short) and the coins it pays leave its carbon account; the
contract holds both until it ends (energy_endings.py), when the plant is paid pro rata."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from gridledger.common.v1 import energy_pb2
from gridledger_core.energy.delivery import first_boundary_at_or_after
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
from gridledger_core.ledger.errors import Code, ContractStatus, TxInvalid
from gridledger_core.ledger.rules import money
from gridledger_core.ledger.rules.bounds import require_uint64
from gridledger_core.ledger.rules.energy_delivery import (
    MAX_OPEN_CONTRACTS_PER_PLANT,
    attribute_existing,
)
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


def _check_deadline(terms: energy_pb2.SupplyContractTerms, ctx: TxContext,
                    delivery_start: int) -> None:
    longest = ctx.genesis.settlement.max_contract_seconds
    interval = ctx.genesis.reading_interval_seconds
    require(delivery_start + interval <= terms.deliver_by <= ctx.block_time + longest,
            Code.TX_VALIDATION_CODE_INVALID_BODY,
            f"deliver_by {terms.deliver_by} must leave at least one interval after delivery "
            f"starts ({delivery_start}) and be at most {longest} s (genesis "
            f"settlement.max_contract_seconds) after the commit at {ctx.block_time}")


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
    interval = ctx.genesis.reading_interval_seconds
    delivery_start = first_boundary_at_or_after(ctx.block_time, interval)
    _check_deadline(terms, ctx, delivery_start)
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
    require(plant.open_contracts < MAX_OPEN_CONTRACTS_PER_PLANT,
            Code.TX_VALIDATION_CODE_STATE_CONFLICT,
            f"{plant.plant} has {plant.open_contracts} open contracts, the most a plant may have")
    open_key = schema.open_contract_key(meter.name)
    current = state.get(open_key)
    require(current is None, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
            f"{meter.name} already has open contract {(current or b'').decode()}; "
            "one open contract per meter, so every reading is attributed once")
    account = get_carbon(state, meter.name)
    require(terms.coins_paid <= account.coins, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
            f"{meter.name} has {account.coins} carbon coins, cannot pay {terms.coins_paid}")
    due = amount - terms.coins_paid * terms.coin_value_micro
    money.require_funds(state, ctx.genesis, meter.name, due,
                        f"contract {cid[:16]} (its money due)")
    # Totals that only grow: a plant may announce any remaining energy again and again, so
    # its contracted total can reach the uint64 limit.
    conflict = Code.TX_VALIDATION_CODE_STATE_CONFLICT
    require_uint64(plant.contracted_wh + terms.energy_wh, conflict,
                   f"{plant.plant}'s contracted energy")
    require_uint64(plant.contracts + 1, conflict, f"{plant.plant}'s contract count")
    require_uint64(account.spent + terms.coins_paid, conflict, f"{meter.name}'s spent coins")

    money.reserve(state, ctx, meter.name, due, cid)
    if terms.coins_paid:  # held by the contract until it ends
        account.coins -= terms.coins_paid
        account.spent += terms.coins_paid
        put_carbon(state, account)
    plant.remaining_wh -= terms.energy_wh
    plant.contracted_wh += terms.energy_wh
    plant.contracts += 1
    plant.open_contracts += 1
    put_plant(state, plant)
    state.put(open_key, cid.encode())
    state.put(schema.plant_open_contract_key(plant.plant, ctx.block_time, cid), b"")
    state.put(schema.contracted_key(meter.name), b"")
    record = energy_pb2.SupplyContractRecord(
        contract_id=cid, meter=meter.name, plant=plant.plant,
        price_micro_per_kwh=terms.price_micro_per_kwh, energy_wh=terms.energy_wh,
        pv_panel_id=terms.pv_panel_id, plant_remaining_wh=plant.remaining_wh,
        plant_stated_remaining_wh=terms.plant_remaining_wh, delivery_start=delivery_start,
        committed_at=ctx.block_time, contract_tx_id=ctx.checked.tx_id, amount_micro=amount,
        coins_paid=terms.coins_paid, coin_value_micro=terms.coin_value_micro,
        money_due_micro=due, status=Status.CONTRACT_STATUS_OPEN, plant_terms=body.plant_terms,
        deliver_by=terms.deliver_by, reserved_micro=due)
    put_contract(state, record)
    # Readings may be up to the clock skew early: pairs already complete count now.
    attribute_existing(state, record, ctx.block_time + ctx.genesis.max_clock_skew_seconds,
                       interval)
