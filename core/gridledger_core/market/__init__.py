"""Pre-sale market cores of the endorser (seed 000, claims 2-4): the price-time order book
and the meter forecaster. Pure and deterministic: no I/O, no clocks, no floats in results.

The function ``forecast`` is deliberately not re-exported here: ``market.forecast`` stays the
module (``from gridledger_core.market.forecast import forecast``)."""

from gridledger_core.market.bookset import BookSet
from gridledger_core.market.forecast import (
    DAY_SECONDS,
    DaySample,
    Forecast,
    ForecastParams,
    Reading,
    ReadingLike,
    Weighting,
    history_window,
    net_forecast,
)
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
    "DAY_SECONDS",
    "WH_PER_KWH",
    "BookError",
    "BookSet",
    "CrossedBook",
    "DaySample",
    "Depth",
    "Forecast",
    "ForecastParams",
    "InvalidOrder",
    "MatchResult",
    "Order",
    "OrderBook",
    "OrderStatus",
    "PriceLevel",
    "Reading",
    "ReadingLike",
    "Side",
    "StaleMatch",
    "Trade",
    "UnknownOrder",
    "Weighting",
    "history_window",
    "net_forecast",
]
