"""Pre-sale market cores of the endorser (seed 000, claims 2-4): the price-time order book
and the meter forecaster. Pure and deterministic: no I/O, no clocks, no floats in results."""

from gridledger_core.market.bookset import BookSet
from gridledger_core.market.orderbook import (
    BookError,
    CrossedBook,
    Depth,
    InvalidOrder,
    MatchResult,
    OrderBook,
    PriceLevel,
    StaleMatch,
    UnknownOrder,
)
from gridledger_core.market.orders import WH_PER_KWH, Order, OrderStatus, Side, Trade

__all__ = [
    "WH_PER_KWH",
    "BookError",
    "BookSet",
    "CrossedBook",
    "Depth",
    "InvalidOrder",
    "MatchResult",
    "Order",
    "OrderBook",
    "OrderStatus",
    "PriceLevel",
    "Side",
    "StaleMatch",
    "Trade",
    "UnknownOrder",
]
