"""The endorser's order books: a cache of the open orders on its ledger replica.

It is rebuilt from the ledger at start (every open order of every slot whose market has not
closed) and updated from each committed block: for every valid market transaction, the
orders it touched are re-read from the ledger and put in the book as the ledger now has them.
So the cache never holds an order, or a quantity, the ledger does not; it can only lag the
ledger by the block being applied, and an option matched against a lagging book fails the
commit-time rules (a stale option), never the ledger's consistency. If an update ever fails
(it should not), the whole cache is rebuilt from the ledger.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge

from gridledger.common.v1 import envelope_pb2, market_pb2, transaction_pb2
from gridledger_core.ledger import schema
from gridledger_core.ledger.errors import Code
from gridledger_core.ledger.ledger import CommitResult, Ledger
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.market import BookSet, Depth, MatchResult, Order
from gridledger_core.market import ledger_view as view

log = logging.getLogger(__name__)

TRADES = Counter("gridledger_endorser_trades", "Trades proposed in options and committed.",
                 ["stage"])
MATCHED_WH = Counter("gridledger_endorser_matched_energy_wh",
                     "Energy of the trades proposed in options and committed, Wh.", ["stage"])
OPEN_ORDERS = Gauge("gridledger_endorser_book_open_orders",
                    "Open orders in the endorser's book cache, all slots.")
REBUILDS = Counter("gridledger_endorser_book_rebuilds", "Full rebuilds of the book cache.")


class BookCache:
    def __init__(self, ledger: Ledger, clock: Callable[[], float] = time.time) -> None:
        self._ledger = ledger
        self._clock = clock
        self._market = ledger.genesis.market
        self._lock = threading.Lock()
        self._books = self._new_books()
        self.height = 0  # ledger height the cache reflects
        self.rebuild()

    def _new_books(self) -> BookSet:
        return BookSet(tick=self._market.price_tick, lot=self._market.lot_wh)

    # -- reading ----------------------------------------------------------------------------

    def match(self, order: Order) -> tuple[MatchResult, dict[str, str], int]:
        """Propose (never apply) ``order`` against its slot's book: the result, the owners of
        the resting orders it trades with, and the ledger height of the book."""
        with self._lock:
            book = self._books.book(order.slot)
            result = book.match(order)
            owners = {}
            for trade in result.trades:
                maker = book.get(trade.maker_id)
                assert maker is not None
                owners[trade.maker_id] = maker.owner
            return result, owners, self.height

    def depth(self, slot_start: int, levels: int | None = None) -> tuple[Depth, int]:
        with self._lock:
            book = self._books.get(slot_start)
            depth = book.depth(levels) if book is not None else Depth((), ())
            return depth, self.height

    def open_orders(self) -> list[tuple[int, str, int, int]]:
        """(slot, order id, price, remaining) of every cached order, for comparisons."""
        with self._lock:
            return [(book.slot, o.order_id, o.price, o.remaining)
                    for book in self._books for o in book.open_orders()]

    # -- following the ledger ----------------------------------------------------------------

    def rebuild(self) -> None:
        """Replace the cache with the open orders of the ledger's slots that are still open."""
        REBUILDS.inc()
        with self._lock:
            height = self._ledger.height
            now = int(self._clock())
            first = self._first_open_slot(now)
            books = self._new_books()
            state = StateOverlay(self._ledger.store)
            start = schema.order_book_prefix(first)
            for _, value in self._ledger.scan_state("order-book/", start=start):
                record = view.load_order(state, value.decode())
                if record is not None and record.remaining_wh and self._open(record, now):
                    books.rest(view.to_book_order(record))
            self._books = books
            self.height = height
            OPEN_ORDERS.set(sum(len(b) for b in books))

    def _first_open_slot(self, now: int) -> int:
        slot = self._market.slot_seconds
        return max(0, (now + self._market.gate_closure_seconds) // slot * slot)

    def _closed(self, slot_start: int, now: int) -> bool:
        """Past gate closure: the slot's orders are final and can no longer trade."""
        return now >= slot_start - self._market.gate_closure_seconds

    def _open(self, record: market_pb2.OrderRecord, now: int) -> bool:
        return not self._closed(record.slot_start, now)

    def on_commit(self, result: CommitResult) -> None:
        """BlockFollower's callback: apply the block's valid market transactions."""
        try:
            self._apply(result)
        except Exception:
            log.exception("book cache update for block %d failed; rebuilding", result.number)
            self.rebuild()

    def _apply(self, result: CommitResult) -> None:
        valid = [i for i, code in enumerate(result.codes) if code == Code.TX_VALIDATION_CODE_VALID]
        touched: list[str] = []
        committed_trades: list[market_pb2.ProposedTrade] = []
        if valid:
            found = self._ledger.get_block(result.number)
            assert found is not None
            block = found[0]
            for index in valid:
                tx = _transaction(block.transactions[index])
                body = tx.WhichOneof("body")
                if body == "place_order":
                    option = market_pb2.TradeOption.FromString(tx.place_order.option.payload)
                    touched += [t.maker_order_id for t in option.trades]
                    touched.append(tx.header.tx_id)
                    committed_trades += option.trades
                elif body == "cancel_order":
                    touched.append(tx.cancel_order.order_id)
        now = int(self._clock())
        state = StateOverlay(self._ledger.store)
        with self._lock:
            for order_id in touched:  # makers before the taker: its remainder must not cross
                self._sync(state, order_id, now)
            for slot in [b.slot for b in self._books if self._closed(b.slot, now)]:
                self._books.close(slot)
            self.height = result.number + 1
            OPEN_ORDERS.set(sum(len(b) for b in self._books))
        TRADES.labels("committed").inc(len(committed_trades))
        MATCHED_WH.labels("committed").inc(sum(t.quantity_wh for t in committed_trades))

    def _sync(self, state: StateOverlay, order_id: str, now: int) -> None:
        """Make the cached order equal to the ledger's record (or absent if not open)."""
        record = view.load_order(state, order_id)
        if record is None:
            return
        book = self._books.get(record.slot_start)
        if book is not None and order_id in book:
            book.cancel(order_id)
        if record.remaining_wh and self._open(record, now):
            self._books.rest(view.to_book_order(record))


def _transaction(raw: bytes) -> transaction_pb2.Transaction:
    endorsed = envelope_pb2.EndorsedTransaction.FromString(raw)
    return transaction_pb2.Transaction.FromString(endorsed.envelope.payload)
