"""Continuous double auction for one delivery slot, price-time priority (seed 000, claims 3-4).

Matching rules, stated once here and enforced by the tests:

* An incoming BUY matches resting SELLs while its price >= the best (lowest) ask; an
  incoming SELL matches resting BUYs while its price <= the best (highest) bid.
* Priority: better price first; within one price level, lower ``sequence`` (earlier arrival
  in the ledger) first.
* Each trade's quantity is the smaller of the two remaining quantities.
* **Trade price = the resting (maker) order's limit price.** The incoming order never pays
  more (buy) or receives less (sell) than its own limit, and the resting order gets exactly
  the price it asked for, so every trade lies within both limits.
* What is left of the incoming order after its trades keeps matching the next order or
  level in the same loop (claim 4: "the remainder becomes a new request, matched again");
  whatever is still left when the book no longer crosses rests in the book as that order's
  ``remaining`` quantity. The order record holds all of its fills.
* No self-trades: when the next resting order to match belongs to the incoming order's own
  owner, matching stops and the incoming remainder is cancelled (reported as
  ``prevented``). It does not rest, because it would cross the book.

The book never crosses: after every operation best bid < best ask.

The endorser first *proposes* (``match``, which never mutates) and applies only what the
ledger commits (``fill``/``rest``/``cancel``, or ``apply`` for a whole proposal).
``submit`` is ``match`` + ``apply`` for in-process use.

Representation: per side a dict of price levels, each a FIFO deque, and a sorted list of
level keys with the best level at the end (key = price for bids, -price for asks) so the
best level is ``keys[-1]`` and removing it is ``list.pop()``. Cancels are lazy: the order
is marked dead (remaining 0) and dropped from its deque when it reaches the head.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterator
from typing import NamedTuple

from gridledger_core.market.orders import WH_PER_KWH, Order, Side, Trade

BUY = Side.BUY
SELL = Side.SELL


class BookError(ValueError):
    """Base of the order book's typed errors."""


class InvalidOrder(BookError):
    """The order breaks a market rule (tick, lot, slot, duplicate id, nothing open)."""


class UnknownOrder(BookError):
    """No open order with that id in this book."""


class StaleMatch(BookError):
    """A proposal no longer matches the book it is being applied to."""


class CrossedBook(BookError):
    """Resting the order would cross the book (it should have matched)."""


class MatchResult(NamedTuple):
    """What matching an incoming order against the book would do.

    ``filled + remaining + prevented`` equals the order's open quantity before matching.
    """

    order_id: str
    trades: tuple[Trade, ...]
    filled: int  # sum of the trades' quantities
    remaining: int  # what would rest in the book (0 when filled or self-trade-stopped)
    prevented: int  # remainder cancelled by self-trade prevention
    blocked_by: str | None  # the own resting order that stopped matching, if any

    @property
    def rests(self) -> bool:
        return self.remaining > 0


class PriceLevel(NamedTuple):
    price: int
    quantity: int  # open Wh at this price
    orders: int  # number of open orders at this price


class Depth(NamedTuple):
    bids: tuple[PriceLevel, ...]  # best (highest) first
    asks: tuple[PriceLevel, ...]  # best (lowest) first


def _by_sequence(order: Order) -> int:
    return order.sequence


class _Level:
    __slots__ = ("count", "price", "quantity", "queue")

    def __init__(self, price: int) -> None:
        self.price = price
        self.queue: deque[Order] = deque()  # may hold dead orders (remaining == 0)
        self.quantity = 0
        self.count = 0


class _BookSide:
    __slots__ = ("keys", "levels", "sign")

    def __init__(self, sign: int) -> None:
        self.sign = sign  # +1 bids, -1 asks: key = price * sign, best key is the largest
        self.levels: dict[int, _Level] = {}
        self.keys: list[int] = []  # ascending; best at the end

    def best_price(self) -> int | None:
        return self.keys[-1] * self.sign if self.keys else None

    def add(self, order: Order) -> None:
        key = order.price * self.sign
        level = self.levels.get(key)
        if level is None:
            level = self.levels[key] = _Level(order.price)
            keys = self.keys
            if not keys or key > keys[-1]:
                keys.append(key)
            else:
                insort(keys, key)
        queue = level.queue
        if not queue or queue[-1].sequence <= order.sequence:
            queue.append(order)
        else:  # rebuilt out of arrival order: keep the level sorted by sequence
            i = len(queue)
            while i and queue[i - 1].sequence > order.sequence:
                i -= 1
            queue.insert(i, order)
        level.quantity += order.remaining
        level.count += 1

    def reduce(self, order: Order, quantity: int) -> None:
        """Take ``quantity`` off an open order; drop it (and maybe its level) when done."""
        key = order.price * self.sign
        level = self.levels[key]
        order.remaining -= quantity
        level.quantity -= quantity
        if order.remaining:
            return
        level.count -= 1
        if not level.count:
            del self.levels[key]
            keys = self.keys
            if keys[-1] == key:
                keys.pop()
            else:
                del keys[bisect_left(keys, key)]
            return
        queue = level.queue
        while not queue[0].remaining:  # lazy deletion: drop dead orders at the head
            queue.popleft()
        if len(queue) > 2 * level.count + 16:  # many cancels behind the head: compact
            level.queue = deque(o for o in queue if o.remaining)

    def iter_levels(self) -> Iterator[_Level]:
        levels = self.levels
        for key in reversed(self.keys):
            yield levels[key]


class OrderBook:
    """The order book of one delivery slot. See the module docstring for the rules."""

    def __init__(self, slot: int, *, tick: int = 1000, lot: int = 100) -> None:
        if tick <= 0 or lot <= 0 or (tick * lot) % WH_PER_KWH:
            raise ValueError("tick and lot must be positive and tick * lot a multiple of 1000")
        self.slot = slot
        self.tick = tick
        self.lot = lot
        self._bids = _BookSide(1)
        self._asks = _BookSide(-1)
        self._live: dict[str, Order] = {}

    # ---- queries -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, order_id: object) -> bool:
        return order_id in self._live

    def get(self, order_id: str) -> Order | None:
        return self._live.get(order_id)

    def best_bid(self) -> int | None:
        return self._bids.best_price()

    def best_ask(self) -> int | None:
        return self._asks.best_price()

    def open_orders(self) -> list[Order]:
        """All open orders, oldest first."""
        return sorted(self._live.values(), key=_by_sequence)

    def orders_of(self, owner: str) -> list[Order]:
        """The owner's open orders, oldest first (a scan: queries are rare, matching is not)."""
        return sorted((o for o in self._live.values() if o.owner == owner), key=_by_sequence)

    def orders(self, side: Side) -> list[Order]:
        """Open orders of one side in priority order (best price, then earliest)."""
        book_side = self._bids if side is BUY else self._asks
        return [o for level in book_side.iter_levels() for o in level.queue if o.remaining]

    def depth(self, levels: int | None = None) -> Depth:
        """Aggregated price levels, best first; at most ``levels`` per side if given."""

        def side_depth(side: _BookSide) -> tuple[PriceLevel, ...]:
            out: list[PriceLevel] = []
            for level in side.iter_levels():
                if levels is not None and len(out) >= levels:
                    break
                out.append(PriceLevel(level.price, level.quantity, level.count))
            return tuple(out)

        return Depth(side_depth(self._bids), side_depth(self._asks))

    def open_quantity(self, side: Side) -> int:
        book_side = self._bids if side is BUY else self._asks
        return sum(level.quantity for level in book_side.levels.values())

    # ---- proposing (pure) ----------------------------------------------------------------

    def match(self, order: Order) -> MatchResult:
        """Propose the trades ``order`` would make against the book, without mutating it."""
        self._check_incoming(order)
        side = order.side
        book_side = self._asks if side is BUY else self._bids
        keys = book_side.keys
        levels = book_side.levels
        # Crossing, in key terms for both sides: the resting level's key >= this bound.
        bound = order.price * book_side.sign
        owner = order.owner
        taker_id = order.order_id
        remaining = order.remaining
        trades: list[Trade] = []
        blocked_by: str | None = None
        for i in range(len(keys) - 1, -1, -1):
            key = keys[i]
            if key < bound:
                break
            price = levels[key].price
            for maker in levels[key].queue:
                open_qty = maker.remaining
                if not open_qty:
                    continue  # lazily deleted
                if maker.owner == owner:
                    blocked_by = maker.order_id
                    break
                if open_qty >= remaining:
                    trades.append(Trade(maker.order_id, taker_id, price, remaining, side))
                    remaining = 0
                    break
                trades.append(Trade(maker.order_id, taker_id, price, open_qty, side))
                remaining -= open_qty
            if not remaining or blocked_by is not None:
                break
        filled = order.remaining - remaining
        if blocked_by is not None:
            return MatchResult(taker_id, tuple(trades), filled, 0, remaining, blocked_by)
        return MatchResult(taker_id, tuple(trades), filled, remaining, 0, None)

    # ---- applying (mutating) -------------------------------------------------------------

    def submit(self, order: Order) -> MatchResult:
        """Match ``order`` and apply the result at once (in-process use, tests, benchmark)."""
        result = self.match(order)
        self._apply(order, result)
        return result

    def apply(self, order: Order, result: MatchResult) -> None:
        """Apply a proposal made by :meth:`match`; raises :class:`StaleMatch`, changing
        nothing, if the book has moved so that matching now would give a different result."""
        if self.match(order) != result:
            raise StaleMatch(f"proposal for {order.order_id!r} no longer matches the book")
        self._apply(order, result)

    def rest(self, order: Order) -> None:
        """Put an open order (e.g. a committed remainder, or one rebuilt from the ledger) in
        the book as it is. It must not cross the book."""
        self._check_incoming(order)
        if order.side is BUY:
            best = self._asks.best_price()
            if best is not None and order.price >= best:
                raise CrossedBook(f"buy {order.order_id!r} at {order.price} crosses ask {best}")
            self._bids.add(order)
        else:
            best = self._bids.best_price()
            if best is not None and order.price <= best:
                raise CrossedBook(f"sell {order.order_id!r} at {order.price} crosses bid {best}")
            self._asks.add(order)
        self._live[order.order_id] = order

    def fill(self, trade: Trade) -> Order:
        """Record a committed trade on its resting (maker) order; returns that order."""
        maker = self._live.get(trade.maker_id)
        if maker is None:
            raise UnknownOrder(f"no open order {trade.maker_id!r}")
        if trade.price != maker.price:
            raise BookError(f"trade price {trade.price} is not the maker's price {maker.price}")
        if not 0 < trade.quantity <= maker.remaining:
            raise BookError(
                f"fill of {trade.quantity} Wh on {maker.order_id!r} with {maker.remaining} open"
            )
        if maker.side is trade.taker_side:
            raise BookError(f"trade taker side equals maker {maker.order_id!r}'s side")
        self._fill(maker, trade)
        return maker

    def cancel(self, order_id: str) -> Order:
        """Cancel an open order's remaining quantity; returns the order."""
        order = self._live.pop(order_id, None)
        if order is None:
            raise UnknownOrder(f"no open order {order_id!r}")
        order.cancelled += order.remaining
        (self._bids if order.side is BUY else self._asks).reduce(order, order.remaining)
        return order

    # ---- internals -----------------------------------------------------------------------

    def _check_incoming(self, order: Order) -> None:
        # One combined test on the hot path; the specific message is worked out on failure.
        price = order.price
        open_qty = order.remaining
        lot = self.lot
        if (
            order.slot != self.slot
            or price <= 0
            or price % self.tick
            or open_qty <= 0
            or open_qty % lot
            or order.quantity % lot
            or order.order_id in self._live
        ):
            raise self._rejection(order)

    def _rejection(self, order: Order) -> InvalidOrder:
        if order.slot != self.slot:
            return InvalidOrder(f"order for slot {order.slot} in the book of slot {self.slot}")
        if order.price <= 0 or order.price % self.tick:
            return InvalidOrder(f"price {order.price} is not a positive multiple of {self.tick}")
        if order.order_id in self._live:
            return InvalidOrder(f"order {order.order_id!r} is already in the book")
        return InvalidOrder(
            f"open quantity {order.remaining} of {order.quantity} Wh is not a positive "
            f"multiple of the lot {self.lot}"
        )

    def _fill(self, maker: Order, trade: Trade) -> None:
        maker.fills.append(trade)
        if maker.remaining == trade.quantity:
            del self._live[maker.order_id]
        (self._bids if maker.side is BUY else self._asks).reduce(maker, trade.quantity)

    def _apply(self, order: Order, result: MatchResult) -> None:
        trades = result.trades
        if trades:
            live = self._live
            makers = self._asks if order.side is BUY else self._bids
            for trade in trades:
                maker = live[trade.maker_id]
                maker.fills.append(trade)
                if maker.remaining == trade.quantity:
                    del live[trade.maker_id]
                makers.reduce(maker, trade.quantity)
            order.fills.extend(trades)
        order.remaining = result.remaining
        if result.prevented:
            order.prevented += result.prevented
        if result.remaining:
            (self._bids if order.side is BUY else self._asks).add(order)
            self._live[order.order_id] = order
