"""gridctl commands of money and settlement (issue 14):

    gridctl account show [--account A]              balance, reserved, currency
    gridctl account history [--account A]           money movements, newest first
    gridctl account fund --account A --amount X     new money (signed by a treasury account)
    gridctl account transfer --to A --amount X      pay another account (signed by the payer)
    gridctl coins redeem --coins N                  carbon coins for money from the treasury
    gridctl settlement show --slot S                a settled slot and its meters' statements
    gridctl settlement statements --meter M         one meter's statements, by slot

Amounts are shown in currency units with 6 decimals (the ledger keeps integer micro-units);
`--amount` is given the same way (e.g. 12.5). Queries go to a committer with gridctl's TLS
identity (the initiating organisation's admin on the devnet), which the committer lets read
any account (README "Who may do what"); an account defaults to that identity's own.
Transactions are signed `--as` an identity of the consortium directory and wait for the
commit (commit_wait.py).
"""

from __future__ import annotations

import argparse
import datetime
import re
from typing import Any

from gridctl import commit_wait, connect
from gridctl.commands_market import parse_slot, signer, slot_label, submit_and_wait
from gridctl.output import emit, fail
from gridledger.committer.v1 import committer_pb2
from gridledger.common.v1 import envelope_pb2, settlement_pb2
from gridledger_core.signing_identity import SigningIdentity

MICRO = 1_000_000
MAX_MICRO = 2**63 - 1  # rules/money.MAX_SUPPLY: no amount on the ledger exceeds it
_AMOUNT = re.compile(r"^(\d{1,13})(?:\.(\d{1,6}))?$")
ENTRY_COLUMNS = ["sequence", "kind", "balance_change", "reserved_change", "counterparty",
                 "reference", "at", "height", "memo"]
STATEMENT_COLUMNS = ["meter", "slot", "sold_wh", "bought_wh", "produced_wh", "consumed_wh",
                     "delivered_sold_wh", "shortfall_wh", "surplus_wh", "paid", "charged",
                     "credited", "unpaid", "released", "net"]


def units(micro: int) -> str:
    """Micro-units as currency units with 6 decimals: -1500000 -> '-1.500000'."""
    whole, frac = divmod(abs(micro), MICRO)
    return f"{'-' if micro < 0 else ''}{whole}.{frac:06d}"


def parse_amount(text: str) -> int:
    """Currency units (at most 6 decimals, positive) -> micro-units."""
    match = _AMOUNT.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"not an amount in currency units with at most 6 decimals: {text!r}")
    micro = int(match.group(1)) * MICRO + int((match.group(2) or "").ljust(6, "0"))
    if not 0 < micro <= MAX_MICRO:
        raise argparse.ArgumentTypeError(
            f"amount must be positive and at most {units(MAX_MICRO)}, not {text!r}")
    return micro


def _time(seconds: int) -> str:
    if not seconds:
        return ""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _kind(kind: int) -> str:
    return settlement_pb2.EntryKind.Name(kind).removeprefix("ENTRY_KIND_").lower() \
        if kind in settlement_pb2.EntryKind.values() else str(kind)


# -- rows -------------------------------------------------------------------------------------

def account_row(account: settlement_pb2.MoneyAccount, currency: str) -> dict[str, Any]:
    total = account.balance_micro + account.reserved_micro
    return {"account": account.account, "currency": currency,
            "balance": units(account.balance_micro), "reserved": units(account.reserved_micro),
            "total": units(total), "entries": account.entries,
            "balance_micro": account.balance_micro, "reserved_micro": account.reserved_micro}


def entry_row(entry: settlement_pb2.MoneyEntry) -> dict[str, Any]:
    return {"sequence": entry.sequence, "kind": _kind(entry.kind),
            "balance_change": units(entry.balance_delta_micro),
            "reserved_change": units(entry.reserved_delta_micro),
            "counterparty": entry.counterparty, "reference": entry.reference,
            "at": _time(entry.at), "height": entry.height, "memo": entry.memo,
            "balance_delta_micro": entry.balance_delta_micro,
            "reserved_delta_micro": entry.reserved_delta_micro}


def settlement_row(record: settlement_pb2.SlotSettlement) -> dict[str, Any]:
    return {"slot": slot_label(record.slot_start), "slot_start": record.slot_start,
            "settled_by": record.settled_by, "tx_id": record.tx_id,
            "settled_at": _time(record.settled_at), "height": record.height,
            "meters": record.meters, "trades": record.trades, "traded_wh": record.traded_wh,
            "delivered_wh": record.delivered_wh, "shortfall_wh": record.shortfall_wh,
            "surplus_wh": record.surplus_wh,
            "traded_value": units(record.traded_value_micro),
            "imbalance_charges": units(record.imbalance_charges_micro),
            "imbalance_credits": units(record.imbalance_credits_micro),
            "unpaid": units(record.unpaid_micro)}


def statement_row(s: settlement_pb2.MeterStatement) -> dict[str, Any]:
    return {"meter": s.meter, "slot": slot_label(s.slot_start), "slot_start": s.slot_start,
            "sold_wh": s.sold_wh, "bought_wh": s.bought_wh,
            "sold_value": units(s.sold_value_micro), "bought_value": units(s.bought_value_micro),
            "produced_wh": s.produced_wh, "consumed_wh": s.consumed_wh,
            "readings": s.readings, "delivered_sold_wh": s.delivered_sold_wh,
            "shortfall_wh": s.shortfall_wh, "surplus_wh": s.surplus_wh,
            "paid": units(s.paid_micro), "paid_for_purchases": units(s.paid_for_purchases_micro),
            "charged": units(s.shortfall_charge_micro),
            "credited": units(s.surplus_credit_micro), "unpaid": units(s.unpaid_micro),
            "released": units(s.released_micro), "net": units(s.net_micro)}


# -- queries ----------------------------------------------------------------------------------

def _pages(method: Any, request: Any, field: str, limit: int) -> tuple[list[Any], Any]:
    """Every item of a paged listing up to `limit`, and the last response."""
    items: list[Any] = []
    while True:
        response = connect.call(method, request)
        items += list(getattr(response, field))
        if not response.next_page_token or len(items) >= limit:
            return items[:limit], response
        request.page_token = response.next_page_token


def cmd_account_show(args: argparse.Namespace) -> None:
    channel, stub = connect.committer(args.dir, args.node)
    with channel:
        got = connect.call(stub.GetAccount,
                           committer_pb2.GetAccountRequest(account=args.account or ""))
    row = account_row(got.account, got.currency)
    if not args.json:
        row = {k: v for k, v in row.items() if not k.endswith("_micro")}
    emit(row, args.json)


def cmd_account_history(args: argparse.Namespace) -> None:
    channel, stub = connect.committer(args.dir, args.node)
    with channel:
        entries, last = _pages(stub.ListAccountEntries, committer_pb2.ListAccountEntriesRequest(
            account=args.account or "", oldest_first=args.oldest_first), "entries", args.limit)
    rows = [entry_row(e) for e in entries]
    if args.json:
        name = args.account or (entries[0].account if entries else "")
        emit({"account": name, "currency": last.currency, "entries": rows}, True)
        return
    print(f"amounts in {last.currency}")
    emit(rows, False, ENTRY_COLUMNS)


def cmd_settlement_show(args: argparse.Namespace) -> None:
    channel, stub = connect.committer(args.dir, args.node)
    withheld = 0
    with channel:
        request = committer_pb2.GetSlotSettlementRequest(slot_start=args.slot)
        statements: list[settlement_pb2.MeterStatement] = []
        while True:
            got = connect.call(stub.GetSlotSettlement, request)
            statements += list(got.statements)
            withheld += got.withheld
            if not got.next_page_token:
                break
            request.page_token = got.next_page_token
    data = settlement_row(got.settlement) | {"currency": got.currency}
    rows = [statement_row(s) for s in statements]
    if args.json:
        emit(data | {"statements": rows, "withheld": withheld}, True)
        return
    emit(data, False)
    print()
    emit(rows, False, STATEMENT_COLUMNS)
    if withheld:
        print(f"({withheld} statements of meters this identity may not read are not shown)")


def cmd_settlement_statements(args: argparse.Namespace) -> None:
    channel, stub = connect.committer(args.dir, args.node)
    with channel:
        statements, last = _pages(stub.ListMeterStatements,
                                  committer_pb2.ListMeterStatementsRequest(meter=args.meter),
                                  "statements", args.limit)
    rows = [statement_row(s) for s in statements]
    if args.json:
        emit({"meter": args.meter, "currency": last.currency, "statements": rows}, True)
        return
    print(f"amounts in {last.currency}")
    emit(rows, False, STATEMENT_COLUMNS)


# -- transactions -----------------------------------------------------------------------------

def fund_tx(treasury: SigningIdentity, account: str, amount: int,
            memo: str = "") -> envelope_pb2.SignedEnvelope:
    return treasury.new_transaction("fund_account", settlement_pb2.FundAccount(
        account=account, amount_micro=amount, memo=memo))


def transfer_tx(payer: SigningIdentity, to: str, amount: int,
                memo: str = "") -> envelope_pb2.SignedEnvelope:
    return payer.new_transaction("transfer", settlement_pb2.Transfer(
        to=to, amount_micro=amount, memo=memo))


def redeem_tx(holder: SigningIdentity, coins: int) -> envelope_pb2.SignedEnvelope:
    return holder.new_transaction("redeem_coins", settlement_pb2.RedeemCoins(coins=coins))


def _submit(args: argparse.Namespace, build: Any, what: dict[str, Any]) -> None:
    network, channel, stub = connect.endorser(args.dir, args.endorser)
    identity = signer(network, args.as_signer)
    with channel:
        out = what | submit_and_wait(args, stub, build(identity))
    emit(out, args.json)
    if not args.json:
        print(commit_wait.outcome_line(out))
    commit_wait.finish(out)


def cmd_account_fund(args: argparse.Namespace) -> None:
    _submit(args, lambda i: fund_tx(i, args.account, args.amount, args.memo),
            {"account": args.account, "amount": units(args.amount), "by": args.as_signer})


def cmd_account_transfer(args: argparse.Namespace) -> None:
    if "/" in args.to or not args.to:
        fail(f"--to must name an account, not {args.to!r}")
    _submit(args, lambda i: transfer_tx(i, args.to, args.amount, args.memo),
            {"from": args.as_signer, "to": args.to, "amount": units(args.amount)})


def cmd_coins_redeem(args: argparse.Namespace) -> None:
    if args.coins <= 0:
        fail(f"--coins must be positive, not {args.coins}")
    _submit(args, lambda i: redeem_tx(i, args.coins), {"holder": args.as_signer,
                                                        "coins": args.coins})


# -- parser -----------------------------------------------------------------------------------

def _subcommands(sub: Any, name: str, help_text: str) -> Any:
    """The subcommands of `name`, adding to the parser another module made (`coins`)."""
    parser = sub.choices.get(name)
    if parser is None:
        return sub.add_parser(name, help=help_text).add_subparsers(dest="action", required=True)
    for action in parser._actions:  # argparse keeps a parser's subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError(f"gridctl {name} has no subcommands to extend")


def register(sub: Any) -> None:
    """Add the money and settlement commands to gridctl's subcommands."""
    common = connect.common_flags()
    amounts = argparse.ArgumentParser(add_help=False)
    amounts.add_argument("--limit", type=int, default=1000, help="at most this many rows")
    submitting = connect.common_flags(None)
    submitting.add_argument("--endorser", help="endorser to submit to (default: the first)")
    submitting.add_argument("--node", help="committer to wait on (default: the first)")
    commit_wait.add_flags(submitting)

    def signing(default: str | None, who: str, memo: bool = True) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(add_help=False)
        parser.add_argument("--as", dest="as_signer", default=default, required=default is None,
                            metavar="ACCOUNT", help=f"sign as {who} (keys from the consortium "
                            "directory)" + (f"; default {default}" if default else ""))
        if memo:
            parser.add_argument("--memo", default="", help="free text stored with the entry")
        return parser

    account = sub.add_parser("account", help="money accounts").add_subparsers(
        dest="action", required=True)
    show = account.add_parser("show", parents=[common], help="balance, reserved, currency")
    show.add_argument("--account", help="default: gridctl's own identity")
    show.set_defaults(func=cmd_account_show)
    history = account.add_parser("history", parents=[common, amounts],
                                 help="money movements, newest first")
    history.add_argument("--account", help="default: gridctl's own identity")
    history.add_argument("--oldest-first", action="store_true", help="by sequence instead")
    history.set_defaults(func=cmd_account_history)
    fund = account.add_parser("fund", parents=[submitting, signing("treasury", "a treasury "
                              "account of the initiating organisation")],
                              help="create money on an account (treasury)")
    fund.add_argument("--account", required=True)
    fund.add_argument("--amount", type=parse_amount, required=True,
                      help="currency units, up to 6 decimals")
    fund.set_defaults(func=cmd_account_fund)
    transfer = account.add_parser("transfer", parents=[submitting, signing(None, "the payer")],
                                  help="pay another account from the signer's balance")
    transfer.add_argument("--to", required=True)
    transfer.add_argument("--amount", type=parse_amount, required=True,
                          help="currency units, up to 6 decimals")
    transfer.set_defaults(func=cmd_account_transfer)

    coins = _subcommands(sub, "coins", "carbon coins")
    holder = signing(None, "the coins' holder", memo=False)
    redeem = coins.add_parser("redeem", parents=[submitting, holder],
                              help="redeem carbon coins for money from the treasury")
    redeem.add_argument("--coins", type=int, required=True)
    redeem.set_defaults(func=cmd_coins_redeem)

    settlement = sub.add_parser("settlement", help="ex-post settlement of delivery slots") \
        .add_subparsers(dest="action", required=True)
    slot = settlement.add_parser("show", parents=[common],
                                 help="a settled slot and its meters' statements")
    slot.add_argument("--slot", type=parse_slot, required=True,
                      help="delivery slot start: Unix seconds or ISO 8601")
    slot.set_defaults(func=cmd_settlement_show)
    statements = settlement.add_parser("statements", parents=[common, amounts],
                                       help="one meter's statements, by slot")
    statements.add_argument("--meter", required=True)
    statements.set_defaults(func=cmd_settlement_statements)
