"""What every rule receives, and the helper rules use to state a precondition."""

from __future__ import annotations

from dataclasses import dataclass

from gridledger_core.genesis import Genesis
from gridledger_core.identity import Signers
from gridledger_core.ledger.checks import CheckedTransaction
from gridledger_core.ledger.errors import TxInvalid


@dataclass(frozen=True)
class TxContext:
    checked: CheckedTransaction
    genesis: Genesis
    # Unix seconds of the block being applied (for the endorser: of now). Transactions are
    # judged against it, never against a node's own clock, so every committer agrees.
    block_time: int
    # Number of the block being applied (for the endorser: the next block).
    height: int
    # How this block judges signers inside bodies (options, terms): its time and the state
    # overlay at this transaction, so registrations and revocations earlier in the block count.
    signers: Signers


def require(condition: bool, code: int, message: str) -> None:
    if not condition:
        raise TxInvalid(code, message)
