"""Rules of money accounts (issue 14): the treasury of the initiating organisation funds an
account (new money, e.g. paid in fiat off-ledger), and any account pays another from its own
balance. Every movement goes through ``rules/money.py``, so supply and history stay exact.

An account is known if the genesis names it or an admin registered it on the ledger; money
sent anywhere else would be lost to a typo, so it is refused.
"""

from __future__ import annotations

from gridledger.common.v1 import settlement_pb2
from gridledger_core.identity import Role
from gridledger_core.ledger.errors import Code
from gridledger_core.ledger.rules import money
from gridledger_core.ledger.rules.identity import LedgerAccounts
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.ledger.transitions_base import TxContext, require

INVALID = Code.TX_VALIDATION_CODE_INVALID_BODY
CONFLICT = Code.TX_VALIDATION_CODE_STATE_CONFLICT
NOT_AUTHORIZED = Code.TX_VALIDATION_CODE_NOT_AUTHORIZED
MAX_MEMO = 256


def known_account(state: StateOverlay, ctx: TxContext, name: str) -> bool:
    return name in ctx.genesis.accounts or LedgerAccounts(state).registered(name) is not None


def _require_target(state: StateOverlay, ctx: TxContext, name: str, memo: str) -> None:
    require(bool(name), INVALID, "name the account")
    require(len(memo) <= MAX_MEMO, INVALID, f"memo is longer than {MAX_MEMO} characters")
    require(known_account(state, ctx, name), CONFLICT,
            f"unknown_account: {name!r} is neither a genesis account nor registered on the "
            "ledger")


def process_fund_account(state: StateOverlay, ctx: TxContext,
                         body: settlement_pb2.FundAccount) -> None:
    creator = ctx.checked.creator
    require(creator.role == Role.TREASURY and creator.org == ctx.genesis.initiating_organization,
            NOT_AUTHORIZED,
            f"{creator.name} is a {creator.role} of {creator.org}; only a treasury account of "
            f"the initiating organisation {ctx.genesis.initiating_organization} funds accounts")
    require(body.amount_micro > 0, INVALID, "amount_micro must be positive")
    _require_target(state, ctx, body.account, body.memo)
    money.fund(state, ctx, body.account, body.amount_micro, ctx.checked.tx_id, body.memo)


def process_transfer(state: StateOverlay, ctx: TxContext, body: settlement_pb2.Transfer) -> None:
    payer = ctx.checked.creator.name
    require(body.amount_micro > 0, INVALID, "amount_micro must be positive")
    _require_target(state, ctx, body.to, body.memo)
    require(body.to != payer, INVALID, f"self-transfer: {payer} pays itself")
    money.require_funds(state, ctx.genesis, payer, body.amount_micro, "the transfer")
    money.transfer(state, ctx, payer, body.to, body.amount_micro,
                   money.Kind.ENTRY_KIND_TRANSFER, ctx.checked.tx_id, body.memo)


RULES = {"fund_account": process_fund_account, "transfer": process_transfer}
