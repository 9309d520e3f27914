"""Committer queries over the pre-sale market's state: a slot's open orders, a meter's
orders (with every fill) and trades. Paginated by state key, like ListReadings.

A slot whose gate closure has passed, by the tip block's time or this committer's clock, has
no open orders: the ledger expires them with the first block at or after gate closure, and
until that block comes they can no longer trade either."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NoReturn

import grpc

from gridledger.committer.v1 import committer_pb2
from gridledger.common.v1 import market_pb2
from gridledger_core.ledger import schema
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.market import ledger_view as view

DEFAULT_PAGE = 100
MAX_PAGE = 1000


def _page(ledger: Ledger, prefix: str, page_size: int, page_token: str,
          abort: Callable[[grpc.StatusCode, str], NoReturn]) -> tuple[list[bytes], str]:
    """Values of one page of ``prefix`` and the next page's token ("" at the end)."""
    size = page_size or DEFAULT_PAGE
    if size > MAX_PAGE:
        abort(grpc.StatusCode.INVALID_ARGUMENT, f"page_size above {MAX_PAGE}")
    start = page_token or None
    if start is not None and not start.startswith(prefix):
        abort(grpc.StatusCode.INVALID_ARGUMENT, "page_token is not from this listing")
    page = list(ledger.scan_state(prefix, start=start, limit=size + 1))
    token = page[size][0] if len(page) > size else ""
    return [value for _, value in page[:size]], token


def _orders(ledger: Ledger, ids: list[bytes]) -> list[market_pb2.OrderRecord]:
    state = StateOverlay(ledger.store)
    records = [view.load_order(state, order_id.decode()) for order_id in ids]
    return [r for r in records if r is not None]


def list_open_orders(ledger: Ledger, request: committer_pb2.ListOpenOrdersRequest,
                     context: grpc.ServicerContext, now: float | None = None
                     ) -> committer_pb2.ListOpenOrdersResponse:
    closure = request.slot_start - ledger.genesis.market.gate_closure_seconds
    if max(ledger.tip_time(), int(time.time() if now is None else now)) >= closure:
        return committer_pb2.ListOpenOrdersResponse()
    # Buys then sells, each in price-time priority (the index's key order).
    ids, token = _page(ledger, schema.order_book_prefix(request.slot_start), request.page_size,
                       request.page_token, context.abort)
    return committer_pb2.ListOpenOrdersResponse(orders=_orders(ledger, ids), next_page_token=token)


def list_orders(ledger: Ledger, request: committer_pb2.ListOrdersRequest,
                context: grpc.ServicerContext) -> committer_pb2.ListOrdersResponse:
    if not request.meter:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "meter is required")
    prefix = schema.order_meter_prefix(request.meter, request.slot_start or None)
    ids, token = _page(ledger, prefix, request.page_size, request.page_token, context.abort)
    return committer_pb2.ListOrdersResponse(orders=_orders(ledger, ids), next_page_token=token)


def list_trades(ledger: Ledger, request: committer_pb2.ListTradesRequest,
                context: grpc.ServicerContext) -> committer_pb2.ListTradesResponse:
    slot = request.slot_start or None
    if request.meter:
        refs, token = _page(ledger, schema.trade_meter_prefix(request.meter, slot),
                            request.page_size, request.page_token, context.abort)
        raws = [ledger.get_state(schema.trade_prefix() + ref.decode()) for ref in refs]
    else:
        raws, token = _page(ledger, schema.trade_prefix(slot), request.page_size,
                            request.page_token, context.abort)  # type: ignore[assignment]
    return committer_pb2.ListTradesResponse(
        trades=[market_pb2.TradeRecord.FromString(raw) for raw in raws if raw is not None],
        next_page_token=token)
