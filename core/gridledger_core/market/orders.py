"""Order and trade records of the pre-sale market (pure data, no I/O).

Units are fixed for the whole ledger: quantities are integer watt-hours (Wh), prices are
integer micro-currency-units per kWh (µ/kWh). Prices are multiples of the market's tick and
quantities multiples of its lot (defaults 1,000 µ/kWh and 100 Wh); the order book requires
``tick * lot`` to be a multiple of 1,000, so a trade's value, ``price * quantity // 1000``
micro-units, is exact.

An :class:`Order` is the terminal's order record. It holds every fill it took part in
(claim 4 of seed 000), so ``remaining == quantity - filled_quantity - cancelled - prevented``
always holds; the constructor derives ``remaining`` from the fills rather than accepting it,
which keeps that identity true for orders rebuilt from the ledger too.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import NamedTuple

WH_PER_KWH = 1000


class Side(enum.Enum):
    BUY = "buy"
    SELL = "sell"

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


class Trade(NamedTuple):
    """One proposed or committed trade between a resting order (maker) and an incoming one
    (taker). ``price`` is always the maker's limit price (see ``orderbook``)."""

    maker_id: str
    taker_id: str
    price: int
    quantity: int
    taker_side: Side

    @property
    def buy_order_id(self) -> str:
        return self.taker_id if self.taker_side is Side.BUY else self.maker_id

    @property
    def sell_order_id(self) -> str:
        return self.maker_id if self.taker_side is Side.BUY else self.taker_id

    @property
    def value(self) -> int:
        """Money moved from buyer to seller, in micro-currency-units (exact on tick/lot)."""
        return self.price * self.quantity // WH_PER_KWH


class OrderStatus(enum.Enum):
    OPEN = "open"
    FILLED = "filled"
    CANCELLED = "cancelled"  # by its owner, or its remainder by self-trade prevention


class Order:
    """A limit order for one delivery slot; mutated only by the order book's apply methods.

    A plain ``__slots__`` class rather than a dataclass: the matching benchmark creates and
    mutates hundreds of thousands of these per second.
    """

    __slots__ = (
        "cancelled",
        "fills",
        "order_id",
        "owner",
        "prevented",
        "price",
        "quantity",
        "remaining",
        "sequence",
        "side",
        "slot",
    )

    order_id: str
    owner: str
    side: Side
    price: int
    quantity: int
    sequence: int
    slot: int
    remaining: int
    fills: list[Trade]
    cancelled: int
    prevented: int

    def __init__(
        self,
        order_id: str,
        owner: str,
        side: Side,
        price: int,
        quantity: int,
        sequence: int,
        slot: int,
        fills: Iterable[Trade] = (),
    ) -> None:
        self.order_id = order_id
        self.owner = owner
        self.side = side
        self.price = price
        self.quantity = quantity
        # Time priority: the order's position in the ledger, assigned by the caller.
        self.sequence = sequence
        self.slot = slot
        self.fills = list(fills)
        self.remaining = quantity - sum(t.quantity for t in self.fills)
        self.cancelled = 0  # cancelled by its owner
        self.prevented = 0  # cancelled by self-trade prevention

    @property
    def filled_quantity(self) -> int:
        return sum(t.quantity for t in self.fills)

    @property
    def status(self) -> OrderStatus:
        if self.remaining:
            return OrderStatus.OPEN
        if self.cancelled or self.prevented:
            return OrderStatus.CANCELLED
        return OrderStatus.FILLED

    def __repr__(self) -> str:
        return (
            f"Order({self.order_id!r}, owner={self.owner!r}, {self.side.value}, "
            f"price={self.price}, quantity={self.quantity}, remaining={self.remaining}, "
            f"seq={self.sequence}, slot={self.slot}, fills={len(self.fills)}, "
            f"cancelled={self.cancelled}, prevented={self.prevented})"
        )
