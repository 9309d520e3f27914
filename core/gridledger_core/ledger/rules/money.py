"""The money ledger (issue 14): every movement of money goes through these functions, so the
conservation invariant (sum of balance + reserved over all accounts == supply) holds by
construction and each movement leaves a MoneyEntry in the account's history.

Accounts that never moved money hold their genesis allocation (materialised on first write),
so genesis needs no block of its own. Amounts are integer micro-units; a movement that would
take more than an account holds raises TxInvalid(STATE_CONFLICT) naming `insufficient_funds`,
except `charge`, which takes what is there and reports the rest as unpaid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gridledger.common.v1 import settlement_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.ledger import schema
from gridledger_core.ledger.errors import Code, EntryKind
from gridledger_core.ledger.rules.bounds import require_uint64
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.ledger.transitions_base import require

Kind = EntryKind
CONFLICT = Code.TX_VALIDATION_CODE_STATE_CONFLICT
INSUFFICIENT_FUNDS = "insufficient_funds"
# Money never exceeds this, so every signed delta and sum fits an int64/uint64 field.
MAX_SUPPLY = 2**63 - 1


class MoneyContext(Protocol):
    """What a movement records: a rule's TxContext, or the ledger's block prologue (gate
    closure expiry), which has no transaction."""

    @property
    def genesis(self) -> Genesis: ...

    @property
    def block_time(self) -> int: ...

    @property
    def height(self) -> int: ...


@dataclass(frozen=True)
class BlockContext:
    """The MoneyContext of work a block does before its transactions (gate closure expiry)."""

    genesis: Genesis
    block_time: int
    height: int


def ceil_micro(price_micro_per_kwh: int, wh: int) -> int:
    """Money held for `wh` at a price per kWh: rounded up, so escrow always covers the value
    (price * Wh // 1000, rounded down) of any trade within that price."""
    return -(-price_micro_per_kwh * wh // 1000)


class Reader(Protocol):
    def get(self, key: str) -> bytes | None: ...


def get_account(state: Reader, genesis: Genesis, account: str) -> settlement_pb2.MoneyAccount:
    raw = state.get(schema.money_key(account))
    if raw is None:
        return settlement_pb2.MoneyAccount(
            account=account, balance_micro=genesis.settlement.allocations.get(account, 0))
    return settlement_pb2.MoneyAccount.FromString(raw)


def supply(state: Reader, genesis: Genesis) -> int:
    raw = state.get(schema.MONEY_SUPPLY)
    if raw is None:
        return sum(genesis.settlement.allocations.values())
    return int.from_bytes(raw, "big")


def _save(state: StateOverlay, record: settlement_pb2.MoneyAccount) -> None:
    state.put(schema.money_key(record.account), record.SerializeToString(deterministic=True))


def _entry(state: StateOverlay, ctx: MoneyContext, record: settlement_pb2.MoneyAccount,
           kind: int, balance_delta: int, reserved_delta: int, counterparty: str,
           reference: str, memo: str) -> None:
    entry = settlement_pb2.MoneyEntry(
        account=record.account, sequence=record.entries, kind=kind,  # type: ignore[arg-type]
        balance_delta_micro=balance_delta, reserved_delta_micro=reserved_delta,
        counterparty=counterparty, reference=reference, at=ctx.block_time, height=ctx.height,
        memo=memo)
    state.put(schema.money_entry_key(record.account, record.entries),
              entry.SerializeToString(deterministic=True))
    record.entries += 1


def _move(state: StateOverlay, ctx: MoneyContext, account: str, balance_delta: int,
          reserved_delta: int, kind: int, counterparty: str, reference: str,
          memo: str = "") -> settlement_pb2.MoneyAccount:
    record = get_account(state, ctx.genesis, account)
    balance = record.balance_micro + balance_delta
    reserved = record.reserved_micro + reserved_delta
    require(balance >= 0, CONFLICT,
            f"{INSUFFICIENT_FUNDS}: {account} has {record.balance_micro} µ available, "
            f"needs {-balance_delta} µ ({reference})")
    require(reserved >= 0, CONFLICT,
            f"{INSUFFICIENT_FUNDS}: {account} has {record.reserved_micro} µ reserved, "
            f"needs {-reserved_delta} µ ({reference})")
    require_uint64(balance + reserved, CONFLICT, f"{account}'s money")
    require(balance + reserved <= MAX_SUPPLY, CONFLICT,
            f"{account}'s money would exceed {MAX_SUPPLY} µ")
    record.balance_micro, record.reserved_micro = balance, reserved
    _entry(state, ctx, record, kind, balance_delta, reserved_delta, counterparty, reference, memo)
    _save(state, record)
    return record


def fund(state: StateOverlay, ctx: MoneyContext, account: str, amount: int, reference: str,
         memo: str = "") -> None:
    """New money on `account` (FundAccount by the treasury): supply grows by `amount`."""
    total = supply(state, ctx.genesis) + amount
    require(amount > 0, Code.TX_VALIDATION_CODE_INVALID_BODY, "amount must be positive")
    require(total <= MAX_SUPPLY, CONFLICT, f"money supply would exceed {MAX_SUPPLY} µ")
    _move(state, ctx, account, amount, 0, Kind.ENTRY_KIND_FUNDING, "", reference, memo)
    state.put(schema.MONEY_SUPPLY, total.to_bytes(8, "big"))


def transfer(state: StateOverlay, ctx: MoneyContext, payer: str, payee: str, amount: int,
             kind: int, reference: str, memo: str = "", *, from_reserved: bool = False) -> None:
    """`amount` from the payer's balance (or reserved) to the payee's balance."""
    if amount == 0:
        return
    if from_reserved:
        _move(state, ctx, payer, 0, -amount, kind, payee, reference, memo)
    else:
        _move(state, ctx, payer, -amount, 0, kind, payee, reference, memo)
    _move(state, ctx, payee, amount, 0, kind, payer, reference, memo)


def reserve(state: StateOverlay, ctx: MoneyContext, account: str, amount: int,
            reference: str) -> None:
    """Escrow: balance -> reserved; refused (insufficient_funds) if the balance is short."""
    if amount:
        _move(state, ctx, account, -amount, amount, Kind.ENTRY_KIND_RESERVE, "", reference)


def release(state: StateOverlay, ctx: MoneyContext, account: str, amount: int,
            reference: str) -> None:
    """Escrow back: reserved -> balance."""
    if amount:
        _move(state, ctx, account, amount, -amount, Kind.ENTRY_KIND_RELEASE, "", reference)


def charge(state: StateOverlay, ctx: MoneyContext, payer: str, payee: str, amount: int, kind: int,
           reference: str) -> int:
    """Take up to `amount` from the payer's balance for the payee; returns what was paid (the
    rest is the payer's debt, recorded by the caller). Never refuses, so a settlement cannot
    be blocked by one account being short."""
    paid = min(amount, get_account(state, ctx.genesis, payer).balance_micro)
    transfer(state, ctx, payer, payee, paid, kind, reference)
    return paid


def require_funds(state: Reader, genesis: Genesis, account: str, amount: int,
                  what: str) -> None:
    """A precondition with the named condition, for rules that check before they move."""
    available = get_account(state, genesis, account).balance_micro
    require(available >= amount, CONFLICT,
            f"{INSUFFICIENT_FUNDS}: {account} has {available} µ available, {what} needs "
            f"{amount} µ")
