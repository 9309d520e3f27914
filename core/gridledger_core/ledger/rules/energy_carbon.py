"""Rules of carbon coins: issuance with the certificate (claim 5 of seed 002), on the energy a
contract delivered (attributed, so bounded by the plant's production); and redemption of
coins for money with the initiating organisation's treasury (issue 14 item 6)."""

from __future__ import annotations

from gridledger.common.v1 import energy_pb2, settlement_pb2
from gridledger_core.crypto import verify_signature
from gridledger_core.energy import certificate
from gridledger_core.genesis import Genesis
from gridledger_core.identity import Role
from gridledger_core.ledger import schema
from gridledger_core.ledger.errors import Code, ContractStatus, TxInvalid
from gridledger_core.ledger.rules import money
from gridledger_core.ledger.rules.bounds import require_uint64
from gridledger_core.ledger.rules.energy_state import (
    get_carbon,
    get_contract,
    put_carbon,
    put_contract,
)
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.ledger.transitions_base import TxContext, require

Status = ContractStatus


def _certificate(body: energy_pb2.CarbonCoinIssue, ctx: TxContext) -> energy_pb2.CarbonCertificate:
    envelope = body.certificate
    creator = ctx.checked.creator
    require(envelope.signer_certificate == creator.certificate,
            Code.TX_VALIDATION_CODE_NOT_AUTHORIZED,
            "the certificate must be signed by the identity that issues the coins")
    require(verify_signature(creator.public_key, envelope.signature, envelope.payload),
            Code.TX_VALIDATION_CODE_BAD_SIGNATURE,
            "the certificate signature does not verify over its payload")
    try:
        return certificate.decode(envelope.payload)
    except certificate.CertificateInvalid as exc:
        raise TxInvalid(Code.TX_VALIDATION_CODE_MALFORMED, str(exc)) from exc


def process_carbon_coin_issue(state: StateOverlay, ctx: TxContext,
                              body: energy_pb2.CarbonCoinIssue) -> None:
    try:
        certificate.check_issuer(ctx.checked.creator, ctx.genesis)
    except certificate.CertificateInvalid as exc:
        raise TxInvalid(Code.TX_VALIDATION_CODE_NOT_AUTHORIZED, str(exc)) from exc
    contract = get_contract(state, body.contract_id)
    require(contract is not None, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
            f"no contract {body.contract_id!r} on the ledger")
    assert contract is not None
    require(contract.status != Status.CONTRACT_STATUS_ISSUED,
            Code.TX_VALIDATION_CODE_STATE_CONFLICT,
            f"carbon coins for contract {contract.contract_id} were already issued in "
            f"{contract.issue_tx_id}")
    require(contract.status == Status.CONTRACT_STATUS_ENDED, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
            f"contract {contract.contract_id} has no trade end yet; coins only for ended "
            "contracts")
    expected_coins = require_uint64(
        certificate.avoided_grams(contract.delivered_wh, ctx.genesis.carbon_grams_per_kwh),
        Code.TX_VALIDATION_CODE_STATE_CONFLICT, f"contract {contract.contract_id}'s coins")
    require(body.meter == contract.meter and body.coins == expected_coins,
            Code.TX_VALIDATION_CODE_INVALID_BODY,
            f"contract {contract.contract_id} earns {contract.meter} {expected_coins} coins "
            f"({contract.delivered_wh} Wh x {ctx.genesis.carbon_grams_per_kwh} g/kWh), not "
            f"{body.coins} for {body.meter!r}")
    require(expected_coins > 0, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
            f"contract {contract.contract_id} delivered {contract.delivered_wh} Wh, which earns "
            "no coin: nothing to issue")
    cert = _certificate(body, ctx)
    expected = certificate.certificate_for(contract, ctx.genesis, 0)
    expected.issued_at.CopyFrom(cert.issued_at)
    require(cert == expected, Code.TX_VALIDATION_CODE_INVALID_BODY,
            "the certificate does not match the contract, the genesis or the coins")
    require(cert.issued_at.seconds <= ctx.block_time + ctx.genesis.max_clock_skew_seconds,
            Code.TX_VALIDATION_CODE_INVALID_BODY, "the certificate is dated after its block")
    account = get_carbon(state, contract.meter)
    for total, what in ((account.coins, "coins"), (account.received, "received coins")):
        require_uint64(total + body.coins, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
                       f"{contract.meter}'s {what}")
    account.coins += body.coins
    account.received += body.coins
    put_carbon(state, account)
    contract.status = Status.CONTRACT_STATUS_ISSUED
    contract.coins_issued = body.coins
    contract.issue_tx_id = ctx.checked.tx_id
    put_contract(state, contract)
    state.put(schema.certificate_key(contract.contract_id),
              body.certificate.SerializeToString(deterministic=True))


def redemption_treasury(genesis: Genesis) -> str | None:
    """The account that pays redemptions: the first (by name) genesis treasury account of the
    initiating organisation, so every node picks the same one."""
    names = sorted(a.name for a in genesis.accounts.values()
                   if a.org == genesis.initiating_organization and a.role == Role.TREASURY)
    return names[0] if names else None


def process_redeem_coins(state: StateOverlay, ctx: TxContext,
                         body: settlement_pb2.RedeemCoins) -> None:
    holder = ctx.checked.creator.name
    value = ctx.genesis.settlement.coin_redeem_value_micro
    require(body.coins > 0, Code.TX_VALIDATION_CODE_INVALID_BODY, "redeem at least one coin")
    require(value > 0, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
            "redemption closed: genesis settlement.coin_redeem_value_micro is 0")
    treasury = redemption_treasury(ctx.genesis)
    require(treasury is not None, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
            f"redemption closed: {ctx.genesis.initiating_organization} has no treasury account")
    assert treasury is not None
    account = get_carbon(state, holder)
    require(body.coins <= account.coins, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
            f"{holder} has {account.coins} carbon coins, cannot redeem {body.coins}")
    require_uint64(account.spent + body.coins, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
                   f"{holder}'s spent coins")
    require_uint64(account.redeemed + body.coins, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
                   f"{holder}'s redeemed coins")
    amount = body.coins * value
    require(amount <= money.MAX_SUPPLY, Code.TX_VALIDATION_CODE_INVALID_BODY,
            f"{body.coins} coins at {value} µ exceed any money supply")
    # Refused with insufficient_funds when the treasury is short.
    money.transfer(state, ctx, treasury, holder, amount, settlement_pb2.ENTRY_KIND_REDEMPTION,
                   ctx.checked.tx_id, f"{body.coins} carbon coins redeemed")
    account.coins -= body.coins
    account.spent += body.coins
    account.redeemed += body.coins
    put_carbon(state, account)
