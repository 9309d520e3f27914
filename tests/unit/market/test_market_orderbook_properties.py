"""Property tests of the pure order book: any sequence of orders and cancels.

Checked after every step: the book is never crossed; energy is conserved per order and in
total (placed = filled + resting + cancelled + self-trade-prevented); price-time priority
(an incoming order consumes exactly the prefix of the opposite side's priority queue, and
that queue really is ordered by price then arrival); every trade lies within both limits at
the maker's price; claim 4 (remaining = quantity - fills - cancelled - prevented); ``match``
never mutates and ``match`` + ``apply`` equals ``submit``; a book rebuilt from its open
orders, rested in any order, is the same book.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gridledger_core.market import Order, OrderBook, Side

SLOT = 0
TICK = 1_000
LOT = 100
MID = 100  # in ticks

place = st.tuples(
    st.just("place"),
    st.integers(0, 3),  # owner: few owners so self-trades happen
    st.sampled_from([Side.BUY, Side.SELL]),
    st.integers(MID - 4, MID + 4),  # price in ticks: narrow, so orders cross often
    st.integers(1, 8),  # lots
)
cancel = st.tuples(st.just("cancel"), st.integers(0, 10_000))
operations = st.lists(st.one_of(place, place, place, cancel), max_size=60)


def state(book: OrderBook) -> list[tuple[str, int, int, int, int]]:
    """Everything ``match`` must not change: each open order's mutable fields, by priority."""
    return [
        (o.order_id, o.remaining, len(o.fills), o.cancelled, o.prevented)
        for side in (Side.BUY, Side.SELL)
        for o in book.orders(side)
    ]


def priority_key(order: Order) -> tuple[int, int]:
    return (-order.price if order.side is Side.BUY else order.price, order.sequence)


def check_book(book: OrderBook, placed: list[Order]) -> None:
    bid, ask = book.best_bid(), book.best_ask()
    assert bid is None or ask is None or bid < ask, "book crossed"

    open_orders = [o for o in placed if o.remaining]
    assert {o.order_id for o in open_orders} == {
        o.order_id for side in (Side.BUY, Side.SELL) for o in book.orders(side)
    }
    depth = book.depth()
    for side, levels in ((Side.BUY, depth.bids), (Side.SELL, depth.asks)):
        queue = list(book.orders(side))
        assert queue == sorted(queue, key=priority_key), "priority order broken"
        assert book.open_quantity(side) == sum(o.remaining for o in queue)
        assert sum(level.quantity for level in levels) == book.open_quantity(side)
        assert sum(level.orders for level in levels) == len(queue)

    total_fills = 0
    for o in placed:
        filled = sum(t.quantity for t in o.fills)
        # Claim 4: the record holds every fill; what is not filled is open or was cancelled.
        assert o.remaining == o.quantity - filled - o.cancelled - o.prevented
        assert o.remaining >= 0 and o.cancelled >= 0 and o.prevented >= 0
        total_fills += filled
    placed_wh = sum(o.quantity for o in placed)
    resting = book.open_quantity(Side.BUY) + book.open_quantity(Side.SELL)
    cancelled = sum(o.cancelled for o in placed)
    prevented = sum(o.prevented for o in placed)
    assert placed_wh == total_fills + resting + cancelled + prevented


def run_operations(ops: list[tuple]) -> tuple[OrderBook, list[Order]]:
    book = OrderBook(SLOT, tick=TICK, lot=LOT)
    placed: list[Order] = []
    by_id: dict[str, Order] = {}
    for seq, op in enumerate(ops):
        if op[0] == "cancel":
            if placed:
                target = placed[op[1] % len(placed)]
                if target.order_id in book:
                    remaining = target.remaining
                    book.cancel(target.order_id)
                    assert target.cancelled == remaining and target.remaining == 0
            check_book(book, placed)
            continue
        _, owner, side, ticks, lots = op
        order = Order(f"o{seq}", f"m{owner}", side, ticks * TICK, lots * LOT, seq, SLOT)
        opposite = list(book.orders(side.opposite))
        before = state(book)

        proposal = book.match(order)
        assert state(book) == before, "match() mutated the book"
        assert order.remaining == order.quantity and order.fills == []
        result = book.submit(order)
        assert result == proposal

        # Price-time priority: makers are exactly the head of the opposite priority queue.
        makers = [by_id[t.maker_id] for t in result.trades]
        assert makers == opposite[: len(makers)]
        taker_left = order.quantity
        maker_open = before_remaining(opposite, before)
        for trade, maker_before in zip(result.trades, maker_open, strict=False):
            assert trade.quantity == min(taker_left, maker_before)
            taker_left -= trade.quantity
            buy_price = order.price if side is Side.BUY else by_id[trade.maker_id].price
            sell_price = order.price if side is Side.SELL else by_id[trade.maker_id].price
            assert sell_price <= trade.price <= buy_price, "trade outside a limit"
            assert trade.price == by_id[trade.maker_id].price, "not at the maker's price"
            assert by_id[trade.maker_id].owner != order.owner, "self-trade"
        assert result.filled == order.quantity - taker_left
        if result.prevented:
            blocker = opposite[len(makers)]
            assert blocker.order_id == result.blocked_by and blocker.owner == order.owner
            assert result.remaining == 0 and order.order_id not in book
        elif result.remaining:
            # It rests only when nothing left on the other side crosses it.
            rest_of_queue = opposite[len(makers) :]
            assert all(
                (m.price > order.price) if side is Side.BUY else (m.price < order.price)
                for m in rest_of_queue
            )
        assert result.filled + result.remaining + result.prevented == order.quantity

        placed.append(order)
        by_id[order.order_id] = order
        check_book(book, placed)
    return book, placed


def before_remaining(opposite: list[Order], before: list[tuple]) -> list[int]:
    remaining = {oid: rem for oid, rem, *_ in before}
    return [remaining[o.order_id] for o in opposite]


@settings(max_examples=300, deadline=None)
@given(operations)
def test_any_sequence_keeps_the_book_invariants(ops: list[tuple]) -> None:
    run_operations(ops)


@settings(max_examples=100, deadline=None)
@given(operations, st.randoms(use_true_random=False))
def test_rebuilding_from_open_orders_gives_the_same_book(
    ops: list[tuple], rng: random.Random
) -> None:
    book, _ = run_operations(ops)
    open_orders = [o for side in (Side.BUY, Side.SELL) for o in book.orders(side)]
    # As after an endorser restart: fresh records from the ledger, rested in any order.
    copies = [
        Order(o.order_id, o.owner, o.side, o.price, o.quantity, o.sequence, o.slot, o.fills)
        for o in open_orders
    ]
    rng.shuffle(copies)
    rebuilt = OrderBook(SLOT, tick=TICK, lot=LOT)
    for c in copies:
        rebuilt.rest(c)
    assert rebuilt.depth() == book.depth()
    assert [o.order_id for o in rebuilt.orders(Side.BUY)] == [
        o.order_id for o in book.orders(Side.BUY)
    ]
    assert [o.order_id for o in rebuilt.orders(Side.SELL)] == [
        o.order_id for o in book.orders(Side.SELL)
    ]


@settings(max_examples=100, deadline=None)
@given(operations)
def test_proposals_applied_through_the_ledger_path_give_the_same_book(
    ops: list[tuple],
) -> None:
    """The committer's path (``fill`` each trade, then ``rest`` the remainder) ends in the
    same book as ``submit``."""
    reference, _ = run_operations(ops)
    book = OrderBook(SLOT, tick=TICK, lot=LOT)
    orders: dict[str, Order] = {}
    for seq, op in enumerate(ops):
        if op[0] == "cancel":
            ids = list(orders)
            if ids and ids[op[1] % len(ids)] in book:
                book.cancel(ids[op[1] % len(ids)])
            continue
        _, owner, side, ticks, lots = op
        order = Order(f"o{seq}", f"m{owner}", side, ticks * TICK, lots * LOT, seq, SLOT)
        result = book.match(order)
        for trade in result.trades:
            book.fill(trade)
        committed = Order(
            order.order_id,
            order.owner,
            side,
            order.price,
            order.quantity,
            seq,
            SLOT,
            result.trades,
        )
        if result.rests:
            book.rest(committed)
        orders[order.order_id] = committed
    assert book.depth() == reference.depth()
    assert state(book) == state(reference)
