"""CommitterService queries of money and settlement (issue 14): an account's money and its
history, a settled slot with its meters' statements, one meter's statements.

Who may read an account (or a meter's statements), `may_read`: the account itself, an admin
of the account's organisation, and the initiating organisation's admin, treasury and
settlement accounts (they run the market: funding, balancing, settlement). The authorisation
table (rpc/authz.py) admits the roles; the account condition needs the ledger (registered
meters and plants), so it is judged here, with the caller the interceptor verified. This is
a courtesy of the query API, not confidentiality: every organisation's committer replicates
the whole ledger (GetState, GetBlock).

A mixin of CommitterServicer (which provides `self._ledger`)."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import NoReturn

import grpc

from gridledger.committer.v1 import committer_pb2
from gridledger.common.v1 import settlement_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.identity import Account, Role
from gridledger_core.ledger import schema
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.ledger.rules import money
from gridledger_core.ledger.rules.identity import account_key
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.rpc.authz import current_caller
from gridledger_core.rpc.peer_identity import Peer, parse_account

DEFAULT_PAGE = 100
MAX_PAGE = 1000
MAX_NAME = 256
OPERATORS = frozenset({Role.ADMIN, Role.TREASURY, Role.SETTLEMENT})

Abort = Callable[[grpc.StatusCode, str], NoReturn]


def account_of(ledger: Ledger, name: str) -> Account | None:
    """The consortium account `name` (genesis, or a meter/plant registered on the ledger)."""
    return ledger.genesis.accounts.get(name) or parse_account(
        name, ledger.get_state(account_key(name)))


def may_read(caller: Peer, account: str, owner: Account | None, genesis: Genesis) -> bool:
    """Whether `caller` may read `account`'s money and statements (`owner`: its consortium
    account, None if it is not one)."""
    if caller.name == account:
        return True
    if caller.org == genesis.initiating_organization and caller.role in OPERATORS:
        return True
    return caller.role == Role.ADMIN and owner is not None and owner.org == caller.org


def _name(value: str, what: str, abort: Abort) -> None:
    if not 0 < len(value) <= MAX_NAME or "/" in value:
        abort(grpc.StatusCode.INVALID_ARGUMENT,
              f"{what} must be 1 to {MAX_NAME} characters without '/', not {value!r}")


def _readable(ledger: Ledger, caller: Peer | None, account: str, what: str,
              abort: Abort) -> Account | None:
    """Check `account` is a valid name the caller may read; its consortium account."""
    if caller is None:
        abort(grpc.StatusCode.PERMISSION_DENIED, "no verified caller for this query")
    _name(account, what, abort)
    owner = account_of(ledger, account)
    if not may_read(caller, account, owner, ledger.genesis):
        org = f"an account of {owner.org}" if owner else "not a consortium account"
        abort(grpc.StatusCode.PERMISSION_DENIED,
              f"{caller.describe()} may not read {what} {account!r} ({org}): only the "
              "account itself, its organisation's admins, and the initiating organisation's "
              "admin, treasury and settlement accounts")
    return owner


def _page_size(value: int, abort: Abort) -> int:
    if value > MAX_PAGE:
        abort(grpc.StatusCode.INVALID_ARGUMENT, f"page_size {value} is above {MAX_PAGE}")
    return value or DEFAULT_PAGE


def _slot_label(slot: int) -> str:
    return datetime.datetime.fromtimestamp(slot, datetime.UTC).strftime("%Y-%m-%dT%H:%MZ")


def get_account(ledger: Ledger, caller: Peer | None, request: committer_pb2.GetAccountRequest,
                abort: Abort) -> committer_pb2.GetAccountResponse:
    name = request.account or (caller.name if caller else "")
    owner = _readable(ledger, caller, name, "account", abort)
    genesis = ledger.genesis
    stored = ledger.get_state(schema.money_key(name))
    if stored is None and owner is None and name not in genesis.settlement.allocations:
        abort(grpc.StatusCode.NOT_FOUND,
              f"no account {name!r}: not a consortium account, and no money ever moved to it")
    # The ledger rule's own reading: an absent record is the genesis allocation.
    record = money.get_account(StateOverlay(ledger.store), genesis, name)
    return committer_pb2.GetAccountResponse(account=record,
                                            currency=genesis.settlement.currency)


def list_account_entries(ledger: Ledger, caller: Peer | None,
                         request: committer_pb2.ListAccountEntriesRequest,
                         abort: Abort) -> committer_pb2.ListAccountEntriesResponse:
    name = request.account or (caller.name if caller else "")
    _readable(ledger, caller, name, "account", abort)
    size = _page_size(request.page_size, abort)
    total = money.get_account(StateOverlay(ledger.store), ledger.genesis, name).entries
    if request.page_token:
        token = request.page_token
        if not (token.isascii() and token.isdigit()) or int(token) >= total:
            abort(grpc.StatusCode.INVALID_ARGUMENT,
                  f"page_token {token!r} is not from this listing ({name} has {total} entries)")
        first = int(token)
    else:
        first = 0 if request.oldest_first else total - 1
    step = 1 if request.oldest_first else -1
    sequences = [s for s in range(first, first + step * (size + 1), step) if 0 <= s < total]
    response = committer_pb2.ListAccountEntriesResponse(
        currency=ledger.genesis.settlement.currency)
    for sequence in sequences[:size]:
        raw = ledger.get_state(schema.money_entry_key(name, sequence))
        if raw is not None:
            response.entries.append(settlement_pb2.MoneyEntry.FromString(raw))
    if len(sequences) > size:
        response.next_page_token = str(sequences[size])
    return response


def get_slot_settlement(ledger: Ledger, caller: Peer | None,
                        request: committer_pb2.GetSlotSettlementRequest,
                        abort: Abort) -> committer_pb2.GetSlotSettlementResponse:
    if caller is None:
        abort(grpc.StatusCode.PERMISSION_DENIED, "no verified caller for this query")
    slot, seconds = request.slot_start, ledger.genesis.market.slot_seconds
    if slot <= 0 or slot % seconds:
        abort(grpc.StatusCode.INVALID_ARGUMENT,
              f"slot_start {slot} is not the start of a delivery slot (a positive multiple of "
              f"the market's {seconds} s slots)")
    size = _page_size(request.page_size, abort)
    raw = ledger.get_state(schema.settlement_key(slot))
    if raw is None:
        abort(grpc.StatusCode.NOT_FOUND,
              f"slot {slot} ({_slot_label(slot)}) is not settled (no settle_slot committed)")
    prefix = schema.statement_prefix(slot)
    if request.page_token and not request.page_token.startswith(prefix):
        abort(grpc.StatusCode.INVALID_ARGUMENT, "page_token is not from this listing")
    page = list(ledger.scan_state(prefix, start=request.page_token or None, limit=size + 1))
    response = committer_pb2.GetSlotSettlementResponse(
        settlement=settlement_pb2.SlotSettlement.FromString(raw),
        currency=ledger.genesis.settlement.currency)
    for _, value in page[:size]:
        statement = settlement_pb2.MeterStatement.FromString(value)
        if may_read(caller, statement.meter, account_of(ledger, statement.meter),
                    ledger.genesis):
            response.statements.append(statement)
        else:
            response.withheld += 1
    if len(page) > size:
        response.next_page_token = page[size][0]
    return response


def list_meter_statements(ledger: Ledger, caller: Peer | None,
                          request: committer_pb2.ListMeterStatementsRequest,
                          abort: Abort) -> committer_pb2.ListMeterStatementsResponse:
    meter = request.meter
    _readable(ledger, caller, meter, "meter", abort)
    size = _page_size(request.page_size, abort)
    prefix = schema.statement_meter_key(meter, 0).rpartition("/")[0] + "/"
    if request.page_token and not request.page_token.startswith(prefix):
        abort(grpc.StatusCode.INVALID_ARGUMENT, "page_token is not from this listing")
    page = list(ledger.scan_state(prefix, start=request.page_token or None, limit=size + 1))
    response = committer_pb2.ListMeterStatementsResponse(
        currency=ledger.genesis.settlement.currency)
    for key, _ in page[:size]:
        raw = ledger.get_state(schema.statement_key(int(key.rpartition("/")[2]), meter))
        if raw is not None:
            response.statements.append(settlement_pb2.MeterStatement.FromString(raw))
    if len(page) > size:
        response.next_page_token = page[size][0]
    return response


class SettlementQueries:
    _ledger: Ledger

    def GetAccount(self, request: committer_pb2.GetAccountRequest,
                   context: grpc.ServicerContext) -> committer_pb2.GetAccountResponse:
        return get_account(self._ledger, current_caller(), request, context.abort)

    def ListAccountEntries(self, request: committer_pb2.ListAccountEntriesRequest,
                           context: grpc.ServicerContext
                           ) -> committer_pb2.ListAccountEntriesResponse:
        return list_account_entries(self._ledger, current_caller(), request, context.abort)

    def GetSlotSettlement(self, request: committer_pb2.GetSlotSettlementRequest,
                          context: grpc.ServicerContext
                          ) -> committer_pb2.GetSlotSettlementResponse:
        return get_slot_settlement(self._ledger, current_caller(), request, context.abort)

    def ListMeterStatements(self, request: committer_pb2.ListMeterStatementsRequest,
                            context: grpc.ServicerContext
                            ) -> committer_pb2.ListMeterStatementsResponse:
        return list_meter_statements(self._ledger, current_caller(), request, context.abort)
