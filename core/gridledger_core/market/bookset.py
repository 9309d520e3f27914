"""All open markets of an endorser: one :class:`OrderBook` per delivery slot."""

from __future__ import annotations

from collections.abc import Iterator

from gridledger_core.market.orderbook import MatchResult, OrderBook, UnknownOrder
from gridledger_core.market.orders import Order, Trade


class BookSet:
    """Order books keyed by delivery slot, created on first use, dropped at gate closure."""

    def __init__(self, *, tick: int = 1000, lot: int = 100) -> None:
        self.tick = tick
        self.lot = lot
        self._books: dict[int, OrderBook] = {}

    def __len__(self) -> int:
        return len(self._books)

    def __iter__(self) -> Iterator[OrderBook]:
        return iter([self._books[slot] for slot in sorted(self._books)])

    def book(self, slot: int) -> OrderBook:
        """The book of ``slot``, created empty if it does not exist yet."""
        book = self._books.get(slot)
        if book is None:
            book = self._books[slot] = OrderBook(slot, tick=self.tick, lot=self.lot)
        return book

    def get(self, slot: int) -> OrderBook | None:
        return self._books.get(slot)

    def close(self, slot: int) -> list[Order]:
        """Drop the book of ``slot`` (gate closure); returns the orders that were open in it."""
        book = self._books.pop(slot, None)
        return [] if book is None else book.open_orders()

    def find(self, order_id: str) -> OrderBook | None:
        """The book holding open order ``order_id``, if any."""
        for book in self._books.values():
            if order_id in book:
                return book
        return None

    def match(self, order: Order) -> MatchResult:
        return self.book(order.slot).match(order)

    def apply(self, order: Order, result: MatchResult) -> None:
        self.book(order.slot).apply(order, result)

    def submit(self, order: Order) -> MatchResult:
        return self.book(order.slot).submit(order)

    def rest(self, order: Order) -> None:
        self.book(order.slot).rest(order)

    def fill(self, trade: Trade) -> Order:
        book = self.find(trade.maker_id)
        if book is None:
            raise UnknownOrder(f"no open order {trade.maker_id!r}")
        return book.fill(trade)

    def cancel(self, order_id: str) -> Order:
        book = self.find(order_id)
        if book is None:
            raise UnknownOrder(f"no open order {order_id!r}")
        return book.cancel(order_id)

    def orders_of(self, owner: str) -> list[Order]:
        """The owner's open orders over all slots, by slot then arrival."""
        return [o for book in self for o in book.orders_of(owner)]
