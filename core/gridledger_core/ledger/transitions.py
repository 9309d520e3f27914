"""The state-transition rules: one `process_<body>(state, ctx, body)` per transaction type.

Each checks its preconditions, raising TxInvalid with a specific code and message, and only then
writes to the state overlay. The endorser runs them to simulate and admit; committers run them
again in block order to validate and apply. Nothing else in the system decides what a
transaction does. The rules live in `ledger/rules/`, one module per area.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gridledger_core.ledger.errors import Code, TxInvalid
from gridledger_core.ledger.rules import accounts as account_rules
from gridledger_core.ledger.rules import energy as energy_rules
from gridledger_core.ledger.rules import identity as identity_rules
from gridledger_core.ledger.rules import market as market_rules
from gridledger_core.ledger.rules import readings
from gridledger_core.ledger.rules import settlement as settlement_rules
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.ledger.transitions_base import TxContext

TRANSITIONS: dict[str, Callable[[StateOverlay, TxContext, Any], None]] = {
    **readings.RULES,
    **energy_rules.RULES,
    **market_rules.RULES,
    **identity_rules.RULES,
    **account_rules.RULES,
    **settlement_rules.RULES,
}


def apply_transaction(state: StateOverlay, ctx: TxContext) -> None:
    """Run the rule of the transaction's type; on TxInvalid the caller rolls back."""
    body_name = ctx.checked.body
    process = TRANSITIONS.get(body_name)
    if process is None:
        raise TxInvalid(Code.TX_VALIDATION_CODE_MALFORMED, f"unknown transaction type {body_name}")
    process(state, ctx, getattr(ctx.checked.tx, body_name))


__all__ = ["TRANSITIONS", "TxContext", "apply_transaction"]
