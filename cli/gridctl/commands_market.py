"""gridctl's pre-sale market commands: `order place|cancel|list`, `book SLOT`, `trades`.

`order place` signs as a meter of the devnet (`--as METER`, keys from the consortium
directory named in network.json): it sends the signed trade request to an endorser, shows the
option it got back (the trades and what would rest), checks it (market/option_check.py: a
consortium endorser's signature, the digest of this very request, the exact terms, trades
within the limit; otherwise it signs nothing and exits 5 saying why), accepts it by
submitting a PlaceOrder transaction that carries the option, and waits for the commit
(commit_wait.py: block, validation code, exit status; --no-wait, --wait-timeout). Slots are
given as Unix seconds or ISO 8601 (e.g. 2026-11-22T12:00Z); prices in µ/kWh, quantities in Wh.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from typing import Any

from gridctl import commit_wait, connect, devnet
from gridctl.output import emit, fail
from gridledger.committer.v1 import committer_pb2
from gridledger.common.v1 import envelope_pb2, market_pb2
from gridledger.endorser.v1 import endorser_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.market import ledger_view as view
from gridledger_core.market.option_check import OptionRefused, accept_option
from gridledger_core.signing_identity import SigningIdentity

SIDES = {"buy": market_pb2.ORDER_SIDE_BUY, "sell": market_pb2.ORDER_SIDE_SELL}
ORDER_COLUMNS = ["order_id", "owner", "side", "slot", "price", "quantity_wh", "filled_wh",
                 "remaining_wh", "cancelled_wh", "fills"]
EXIT_OPTION_REFUSED = 5  # the endorser's option is not what was asked: nothing signed
TRADE_COLUMNS = ["trade_id", "slot", "buyer", "seller", "price", "quantity_wh", "taker_side",
                 "executed_at"]


def parse_slot(text: str) -> int:
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not Unix seconds or ISO 8601: {text!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp())


def slot_label(seconds: int) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%MZ")


def signer(network: devnet.Network, name: str) -> SigningIdentity:
    if not (network.consortium_dir / "nodes" / name).is_dir():
        fail(f"no identity {name!r} in {network.consortium_dir}")
    return SigningIdentity.load(network.consortium_dir, name)


def submit_and_wait(args: argparse.Namespace, stub: Any,
                     envelope: envelope_pb2.SignedEnvelope) -> dict[str, Any]:
    """Submit (the same envelope again while the network is unavailable) and, unless
    --no-wait, wait for the commit: tx id, block, validation code, message."""
    tx_id = commit_wait.submit(stub, envelope, args.wait_timeout)
    out: dict[str, Any] = {"tx_id": tx_id}
    if not args.no_wait:
        channel, committer = connect.committer(args.dir, args.node)
        with channel:
            out |= commit_wait.wait_committed(committer, tx_id, args.wait_timeout)
    return out


# -- rows -------------------------------------------------------------------------------------

def order_row(record: market_pb2.OrderRecord) -> dict:
    filled = sum(f.quantity_wh for f in record.fills)
    return {"order_id": record.order_id, "owner": record.owner,
            "side": view.side_name(record.side), "slot": slot_label(record.slot_start),
            "slot_start": record.slot_start, "price": record.price,
            "quantity_wh": record.quantity_wh, "filled_wh": filled,
            "remaining_wh": record.remaining_wh, "cancelled_wh": record.cancelled_wh,
            "fills": len(record.fills), "sequence": record.sequence,
            "fill_list": [trade_row(f) for f in record.fills]}


def trade_row(trade: market_pb2.TradeRecord) -> dict:
    return {"trade_id": trade.trade_id, "slot": slot_label(trade.slot_start),
            "slot_start": trade.slot_start, "buyer": trade.buyer, "seller": trade.seller,
            "buy_order_id": trade.buy_order_id, "sell_order_id": trade.sell_order_id,
            "price": trade.price, "quantity_wh": trade.quantity_wh,
            "taker_side": view.side_name(trade.taker_side),
            "executed_at": slot_label(trade.executed_at)}


# -- commands ---------------------------------------------------------------------------------

def request_and_accept(stub: Any, meter: SigningIdentity, terms: market_pb2.OrderTerms,
                       genesis: Genesis, now: int
                       ) -> tuple[endorser_pb2.RequestOptionsResponse, market_pb2.TradeOption,
                                  envelope_pb2.SignedEnvelope]:
    """Ask the endorser for an option on `terms`, check it against the request, and sign the
    PlaceOrder that accepts it. Exits EXIT_OPTION_REFUSED (nothing signed) when the option
    is not an answer to this request with these terms."""
    request = market_pb2.TradeRequest(terms=terms, nonce=os.urandom(16), requested_at=now)
    payload = request.SerializeToString()
    answer = connect.call(stub.RequestOptions, endorser_pb2.RequestOptionsRequest(
        request=meter.sign_envelope(payload)))
    try:
        option = accept_option(answer.option, payload, genesis, now)
    except OptionRefused as exc:
        fail(f"refused to sign the endorser's option: {exc}", EXIT_OPTION_REFUSED)
        raise  # unreachable: fail exits
    # Accepting = signing a transaction that carries the endorser-signed option as is.
    envelope = meter.new_transaction("place_order", market_pb2.PlaceOrder(option=answer.option),
                                     timestamp=now)
    return answer, option, envelope


def add_terms_flags(parser: argparse.ArgumentParser) -> None:
    """An order's terms: --side, --slot, --price, --quantity (`terms_from` reads them)."""
    parser.add_argument("--side", choices=sorted(SIDES), required=True)
    parser.add_argument("--slot", type=parse_slot, required=True,
                        help="delivery slot start: Unix seconds or ISO 8601")
    parser.add_argument("--price", type=int, required=True, help="limit price, µ/kWh")
    parser.add_argument("--quantity", type=int, required=True, help="energy, Wh")


def terms_from(args: argparse.Namespace, meter: str) -> market_pb2.OrderTerms:
    return market_pb2.OrderTerms(meter=meter, side=SIDES[args.side], slot_start=args.slot,
                                 price=args.price, quantity_wh=args.quantity)


def cmd_order_place(args: argparse.Namespace) -> None:
    network, channel, stub = connect.endorser(args.dir, args.endorser)
    meter = signer(network, args.as_meter)
    terms = terms_from(args, meter.name)
    genesis = Genesis.load(network.consortium_dir / "genesis.json")
    with channel:
        answer, option, envelope = request_and_accept(stub, meter, terms, genesis,
                                                      int(time.time()))
        committed = submit_and_wait(args, stub, envelope)
    out: dict[str, Any] = {
        "order_id": committed.pop("tx_id"), "option_id": option.option_id,
        "trades": [{"maker_order_id": t.maker_order_id, "counterparty": t.maker,
                    "price": t.price, "quantity_wh": t.quantity_wh} for t in option.trades],
        "filled_wh": sum(t.quantity_wh for t in option.trades), "rests_wh": option.rest_wh,
        "cancelled_wh": option.cancelled_wh, "forecast_net_wh": answer.forecast_net_wh,
        "allowance_wh": answer.allowance_wh, "committed_before_wh": answer.committed_wh}
    out |= committed
    if args.json:
        emit(out, True)
        commit_wait.finish(out)
        return
    trades = out.pop("trades")
    emit(out, False)
    if trades:
        print()
        emit(trades, False, ["maker_order_id", "counterparty", "price", "quantity_wh"])
    print(commit_wait.outcome_line(out))
    commit_wait.finish(out)


def cmd_order_cancel(args: argparse.Namespace) -> None:
    network, channel, stub = connect.endorser(args.dir, args.endorser)
    meter = signer(network, args.as_meter)
    envelope = meter.new_transaction("cancel_order",
                                     market_pb2.CancelOrder(order_id=args.order_id))
    with channel:
        committed = submit_and_wait(args, stub, envelope)
    out: dict[str, Any] = {"tx_id": committed.pop("tx_id"), "order_id": args.order_id}
    out |= committed
    emit(out, args.json)
    if not args.json:
        print(commit_wait.outcome_line(out))
    commit_wait.finish(out)


def _all_pages(method: Any, request: Any, field: str, limit: int) -> list[Any]:
    items: list[Any] = []
    while True:
        response = connect.call(method, request)
        items += list(getattr(response, field))
        if not response.next_page_token or len(items) >= limit:
            return items[:limit]
        request.page_token = response.next_page_token


def cmd_order_list(args: argparse.Namespace) -> None:
    channel, stub = connect.committer(args.dir, args.node)
    with channel:
        if args.meter:
            records = _all_pages(stub.ListOrders, committer_pb2.ListOrdersRequest(
                meter=args.meter, slot_start=args.slot or 0), "orders", args.limit)
        elif args.slot:
            records = _all_pages(stub.ListOpenOrders, committer_pb2.ListOpenOrdersRequest(
                slot_start=args.slot), "orders", args.limit)
        else:
            fail("give --meter (a meter's orders) or --slot (a slot's open orders)")
    rows = [order_row(r) for r in records]
    if not args.json:
        rows = [{k: v for k, v in r.items() if k != "fill_list"} for r in rows]
    emit(rows, args.json, ORDER_COLUMNS)


def cmd_book(args: argparse.Namespace) -> None:
    _, channel, stub = connect.endorser(args.dir, args.endorser)
    with channel:
        book = connect.call(stub.GetBook, endorser_pb2.GetBookRequest(slot_start=args.slot,
                                                               levels=args.levels))
    levels = lambda side: [{"price": lv.price, "quantity_wh": lv.quantity_wh,  # noqa: E731
                            "orders": lv.orders} for lv in side]
    data = {"slot": slot_label(book.slot_start), "slot_start": book.slot_start,
            "open": book.open, "ledger_height": book.ledger_height,
            "bids": levels(book.bids), "asks": levels(book.asks)}
    if args.json:
        emit(data, True)
        return
    print(f"slot {data['slot']} ({'open' if book.open else 'closed'}), "
          f"ledger height {book.ledger_height}")
    rows = []
    for i in range(max(len(book.bids), len(book.asks))):
        bid = book.bids[i] if i < len(book.bids) else None
        ask = book.asks[i] if i < len(book.asks) else None
        rows.append({"bid_orders": bid.orders if bid else "", "bid_wh": bid.quantity_wh
                     if bid else "", "bid_price": bid.price if bid else "",
                     "ask_price": ask.price if ask else "",
                     "ask_wh": ask.quantity_wh if ask else "",
                     "ask_orders": ask.orders if ask else ""})
    emit(rows, False, ["bid_orders", "bid_wh", "bid_price", "ask_price", "ask_wh",
                       "ask_orders"])


def cmd_trades(args: argparse.Namespace) -> None:
    channel, stub = connect.committer(args.dir, args.node)
    with channel:
        trades = _all_pages(stub.ListTrades, committer_pb2.ListTradesRequest(
            meter=args.meter or "", slot_start=args.slot or 0), "trades", args.limit)
    emit([trade_row(t) for t in trades], args.json, TRADE_COLUMNS)


# -- parser -----------------------------------------------------------------------------------

def register(sub: Any) -> None:
    """Add the market commands to gridctl's subcommands."""
    common = connect.common_flags()
    common.add_argument("--endorser", help="endorser to ask (default: the first)")
    signing = argparse.ArgumentParser(add_help=False)
    signing.add_argument("--as", dest="as_meter", required=True, metavar="METER",
                         help="sign as this meter (its keys from the consortium directory)")
    commit_wait.add_flags(signing)

    order = sub.add_parser("order", help="pre-sale orders").add_subparsers(dest="action",
                                                                           required=True)
    place = order.add_parser("place", parents=[common, signing],
                             help="request options, accept them, wait for the commit")
    add_terms_flags(place)
    place.set_defaults(func=cmd_order_place)
    cancel = order.add_parser("cancel", parents=[common, signing], help="cancel an open order")
    cancel.add_argument("order_id")
    cancel.set_defaults(func=cmd_order_cancel)
    listing = order.add_parser("list", parents=[common],
                               help="a meter's orders with fills, or a slot's open orders")
    listing.add_argument("--meter")
    listing.add_argument("--slot", type=parse_slot)
    listing.add_argument("--limit", type=int, default=1000)
    listing.set_defaults(func=cmd_order_list)

    book = sub.add_parser("book", parents=[common], help="depth of a slot's order book")
    book.add_argument("slot", type=parse_slot)
    book.add_argument("--levels", type=int, default=0, help="price levels per side (0: all)")
    book.set_defaults(func=cmd_book)

    trades = sub.add_parser("trades", parents=[common], help="committed trades")
    trades.add_argument("--meter")
    trades.add_argument("--slot", type=parse_slot)
    trades.add_argument("--limit", type=int, default=1000)
    trades.set_defaults(func=cmd_trades)
