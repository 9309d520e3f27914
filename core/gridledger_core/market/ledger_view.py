"""Reading and writing the pre-sale market's ledger state (keys in ``ledger/schema.py``).

Used by the ledger rules (through the transaction's write overlay) and by read-only views of
the committed state (the endorser's book cache, the committer's queries), so the layout is
written down once. Converts ledger records to the pure order book's ``Order``/``Trade``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from gridledger.common.v1 import market_pb2, transaction_pb2
from gridledger_core.ledger import schema
from gridledger_core.market.forecast import DAY_SECONDS, ForecastParams
from gridledger_core.market.orders import Order, Side, Trade

BUY_PB = market_pb2.ORDER_SIDE_BUY
SELL_PB = market_pb2.ORDER_SIDE_SELL


class StateReader(Protocol):
    """What a read needs: ``StateOverlay`` (rules, views over the committed store) fits."""

    def get(self, key: str) -> bytes | None: ...

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    def scan(self, prefix: str, limit: int | None = None) -> Iterator[tuple[str, bytes]]: ...


class StateWriter(StateReader, Protocol):
    def put(self, key: str, value: bytes) -> None: ...

    def delete(self, key: str) -> None: ...


def side_of(side: int) -> Side:
    """The pure book's side of a protobuf ``OrderSide`` (callers reject UNSPECIFIED first)."""
    return Side.BUY if side == BUY_PB else Side.SELL


def side_pb(side: Side) -> int:
    return BUY_PB if side is Side.BUY else SELL_PB


def side_letter(side: int) -> str:
    return "b" if side == BUY_PB else "s"


def opposite_pb(side: int) -> int:
    return SELL_PB if side == BUY_PB else BUY_PB


def side_name(side: int) -> str:
    return {BUY_PB: "buy", SELL_PB: "sell"}.get(side, "unspecified")


# -- orders -----------------------------------------------------------------------------------

def load_order(state: StateReader, order_id: str) -> market_pb2.OrderRecord | None:
    raw = state.get(schema.order_key(order_id))
    return None if raw is None else market_pb2.OrderRecord.FromString(raw)


def save_order(state: StateWriter, record: market_pb2.OrderRecord) -> None:
    state.put(schema.order_key(record.order_id), record.SerializeToString(deterministic=True))


def book_key(record: market_pb2.OrderRecord) -> str:
    return schema.order_book_key(record.slot_start, side_letter(record.side), record.price,
                                 record.sequence)


def best_opposite(state: StateReader, slot_start: int,
                  side: int) -> tuple[int, str] | None:
    """(price, order id) of the best open order on the other side of ``side`` in a slot."""
    other = opposite_pb(side)
    for key, value in state.scan(schema.order_book_prefix(slot_start, side_letter(other)),
                                 limit=1):
        rank = int(key.rsplit("/", 2)[1])
        price = rank if other == SELL_PB else schema.PRICE_RANK_MAX - rank
        return price, value.decode()
    return None


def committed_wh(state: StateReader, meter: str, slot_start: int, side: int) -> int:
    """What the meter has open or traded on one side of a slot: every order's quantity less
    what was cancelled or expired at gate closure (= filled + remaining). Kept as one running
    total per (meter, slot, side), so the preset conditions never scan a meter's orders."""
    raw = state.get(schema.committed_key(meter, slot_start, side_letter(side)))
    return int.from_bytes(raw, "big") if raw else 0


def add_committed_wh(state: StateWriter, meter: str, slot_start: int, side: int,
                     delta: int) -> None:
    """Move the running total of `committed_wh` by `delta` (negative for a cancel)."""
    key = schema.committed_key(meter, slot_start, side_letter(side))
    raw = state.get(key)
    total = (int.from_bytes(raw, "big") if raw else 0) + delta
    if total < 0:
        raise ValueError(f"committed energy of {meter} in slot {slot_start} would be {total}")
    state.put(key, total.to_bytes(8, "big"))


def committed_wh_by_scan(state: StateReader, meter: str, slot_start: int, side: int) -> int:
    """`committed_wh` recomputed from the meter's orders: the definition the running total
    must always equal (checked by the tests)."""
    total = 0
    for _, value in state.scan(schema.order_meter_prefix(meter, slot_start)):
        record = load_order(state, value.decode())
        if record is not None and record.side == side:
            total += record.quantity_wh - record.cancelled_wh - record.expired_wh
    return total


def next_sequence(state: StateWriter) -> int:
    """The next number of the market's sequence: the ledger's time order of orders/trades."""
    raw = state.get(schema.MARKET_SEQUENCE)
    number = (int.from_bytes(raw, "big") if raw else 0) + 1
    state.put(schema.MARKET_SEQUENCE, number.to_bytes(8, "big"))
    return number


def to_book_order(record: market_pb2.OrderRecord) -> Order:
    """The pure book's view of a ledger order (only its open quantity matters to matching)."""
    order = Order(record.order_id, record.owner, side_of(record.side), record.price,
                  record.quantity_wh, record.sequence, record.slot_start,
                  fills=[to_trade(t) for t in record.fills])
    # Cancelled quantity is not a fill; keep remaining = the ledger's remaining.
    order.cancelled = record.cancelled_wh
    order.remaining = record.remaining_wh
    return order


def to_trade(trade: market_pb2.TradeRecord) -> Trade:
    taker = trade.buy_order_id if trade.taker_side == BUY_PB else trade.sell_order_id
    return Trade(trade.maker_order_id, taker, trade.price, trade.quantity_wh,
                 side_of(trade.taker_side))


def iter_orders(state: StateReader, prefix: str) -> Iterator[market_pb2.OrderRecord]:
    """Order records named by an index whose values are order ids."""
    for _, value in state.scan(prefix):
        record = load_order(state, value.decode())
        if record is not None:
            yield record


# -- readings for the forecast ----------------------------------------------------------------

def forecast_keys(meter: str, slot_start: int, slot_seconds: int, interval_seconds: int,
                  params: ForecastParams) -> list[str]:
    """The keys of the meter's readings that can overlap the forecast's daily spans.

    Readings are aligned to the genesis interval (a ledger rule), so the candidates of each
    span are known keys: ``window_days * slot_seconds / interval`` gets (28 for hourly slots,
    15-minute readings and 7 days) instead of scanning the meter's whole history."""
    keys = []
    for days_back in range(1, params.window_days + 1):
        span_start = slot_start - days_back * DAY_SECONDS
        start = span_start - span_start % interval_seconds
        keys += [schema.reading_key(meter, t)
                 for t in range(max(0, start), span_start + slot_seconds, interval_seconds)]
    return keys


def forecast_readings(state: StateReader, meter: str, slot_start: int, slot_seconds: int,
                      interval_seconds: int,
                      params: ForecastParams) -> list[transaction_pb2.MeterReading]:
    """The meter's readings overlapping the forecast's daily spans, by point lookups."""
    keys = forecast_keys(meter, slot_start, slot_seconds, interval_seconds, params)
    return [transaction_pb2.MeterReading.FromString(raw) for raw in state.get_many(keys)
            if raw is not None]
