"""Example-based tests of the order book's rules (seed 000, claims 3-4)."""

from __future__ import annotations

import pytest

from gridledger_core.market import (
    BookError,
    BookSet,
    CrossedBook,
    InvalidOrder,
    Order,
    OrderBook,
    OrderStatus,
    PriceLevel,
    Side,
    StaleMatch,
    Trade,
    UnknownOrder,
)

BUY, SELL = Side.BUY, Side.SELL
SLOT = 3600


class Seq:
    """Hands out arrival sequence numbers, as the ledger would."""

    def __init__(self) -> None:
        self.n = 0

    def order(
        self,
        oid: str,
        side: Side,
        price: int,
        qty: int,
        owner: str | None = None,
        slot: int = SLOT,
    ) -> Order:
        self.n += 1
        return Order(oid, owner or f"acct-{oid}", side, price, qty, self.n, slot)


@pytest.fixture
def seq() -> Seq:
    return Seq()


@pytest.fixture
def book() -> OrderBook:
    return OrderBook(SLOT)


def test_buy_trades_at_the_resting_sell_price(book: OrderBook, seq: Seq) -> None:
    book.submit(seq.order("s1", SELL, 200_000, 500))
    result = book.submit(seq.order("b1", BUY, 230_000, 500))
    assert result.trades == (Trade("s1", "b1", 200_000, 500, BUY),)
    assert result.trades[0].value == 100_000  # 0.2 /kWh * 0.5 kWh in micro-units
    assert len(book) == 0


def test_sell_trades_at_the_resting_buy_price(book: OrderBook, seq: Seq) -> None:
    book.submit(seq.order("b1", BUY, 230_000, 500))
    result = book.submit(seq.order("s1", SELL, 200_000, 300))
    assert result.trades == (Trade("b1", "s1", 230_000, 300, SELL),)
    assert result.trades[0].buy_order_id == "b1"
    assert result.trades[0].sell_order_id == "s1"
    assert book.get("b1") is not None and book.get("b1").remaining == 200


def test_no_cross_means_the_order_rests(book: OrderBook, seq: Seq) -> None:
    book.submit(seq.order("s1", SELL, 200_000, 500))
    result = book.submit(seq.order("b1", BUY, 199_000, 500))
    assert result.trades == () and result.rests and result.remaining == 500
    assert (book.best_bid(), book.best_ask()) == (199_000, 200_000)


def test_equal_prices_cross(book: OrderBook, seq: Seq) -> None:
    book.submit(seq.order("b1", BUY, 200_000, 500))
    assert book.submit(seq.order("s1", SELL, 200_000, 500)).filled == 500


def test_partial_fill_remainder_rests_and_record_holds_all_fills(book: OrderBook, seq: Seq) -> None:
    book.submit(seq.order("s1", SELL, 200_000, 300))
    book.submit(seq.order("s2", SELL, 210_000, 200))
    taker = seq.order("b1", BUY, 220_000, 1_000)
    result = book.submit(taker)
    assert [(t.maker_id, t.price, t.quantity) for t in result.trades] == [
        ("s1", 200_000, 300),
        ("s2", 210_000, 200),
    ]
    # Claim 4: the remainder is the order's remaining quantity and rests in the book.
    assert (result.filled, result.remaining, result.rests) == (500, 500, True)
    assert taker.remaining == 500 == taker.quantity - taker.filled_quantity
    assert taker.fills == list(result.trades)
    assert book.get("b1") is taker and book.best_bid() == 220_000
    # The remainder matches again later, and the record accumulates the new fill.
    book.submit(seq.order("s3", SELL, 215_000, 200))
    assert [t.quantity for t in taker.fills] == [300, 200, 200]
    assert taker.fills[-1].price == 220_000  # now resting, it is the maker
    assert taker.remaining == 300


def test_partially_filled_maker_keeps_its_place(book: OrderBook, seq: Seq) -> None:
    maker = seq.order("s1", SELL, 200_000, 1_000)
    book.submit(maker)
    book.submit(seq.order("s2", SELL, 200_000, 1_000))
    book.submit(seq.order("b1", BUY, 200_000, 400))
    assert maker.remaining == 600 and maker.fills[0].taker_id == "b1"
    result = book.submit(seq.order("b2", BUY, 200_000, 700))
    assert [(t.maker_id, t.quantity) for t in result.trades] == [("s1", 600), ("s2", 100)]
    assert maker.status is OrderStatus.FILLED and "s1" not in book


def test_fifo_within_a_price_level(book: OrderBook, seq: Seq) -> None:
    for oid in ("s1", "s2", "s3"):
        book.submit(seq.order(oid, SELL, 200_000, 100))
    result = book.submit(seq.order("b1", BUY, 200_000, 200))
    assert [t.maker_id for t in result.trades] == ["s1", "s2"]


def test_better_price_beats_earlier_arrival(book: OrderBook, seq: Seq) -> None:
    book.submit(seq.order("b_early", BUY, 200_000, 100))
    book.submit(seq.order("b_better", BUY, 201_000, 100))
    result = book.submit(seq.order("s1", SELL, 190_000, 100))
    assert result.trades[0].maker_id == "b_better"
    assert result.trades[0].price == 201_000


def test_sweep_stops_at_the_limit(book: OrderBook, seq: Seq) -> None:
    book.submit(seq.order("s1", SELL, 200_000, 100))
    book.submit(seq.order("s2", SELL, 201_000, 100))
    book.submit(seq.order("s3", SELL, 203_000, 100))
    result = book.submit(seq.order("b1", BUY, 202_000, 1_000))
    assert [t.maker_id for t in result.trades] == ["s1", "s2"]
    assert result.remaining == 800
    assert (book.best_bid(), book.best_ask()) == (202_000, 203_000)


def test_self_trade_prevention_cancels_the_incoming_remainder(book: OrderBook, seq: Seq) -> None:
    book.submit(seq.order("s1", SELL, 200_000, 100, owner="alice"))
    book.submit(seq.order("s2", SELL, 201_000, 100, owner="bob"))
    book.submit(seq.order("s3", SELL, 201_000, 100, owner="carol"))
    taker = seq.order("b1", BUY, 205_000, 500, owner="bob")
    result = book.submit(taker)
    # Trades with alice (better level), then bob's own resting order stops matching.
    assert [t.maker_id for t in result.trades] == ["s1"]
    assert (result.remaining, result.prevented, result.blocked_by) == (0, 400, "s2")
    assert not result.rests and "b1" not in book
    assert taker.prevented == 400 and taker.status is OrderStatus.CANCELLED
    assert taker.quantity == taker.filled_quantity + taker.remaining + taker.prevented
    # bob's and carol's resting sells are untouched; the book is not crossed.
    assert book.get("s2").remaining == 100 and book.get("s3").remaining == 100
    assert book.best_bid() is None


def test_self_trade_prevention_when_own_order_is_best(book: OrderBook, seq: Seq) -> None:
    book.submit(seq.order("b1", BUY, 200_000, 100, owner="alice"))
    result = book.submit(seq.order("s1", SELL, 190_000, 300, owner="alice"))
    assert result.trades == () and result.prevented == 300 and len(book) == 1


def test_match_does_not_mutate(book: OrderBook, seq: Seq) -> None:
    book.submit(seq.order("s1", SELL, 200_000, 300))
    taker = seq.order("b1", BUY, 200_000, 500)
    before = book.depth()
    result = book.match(taker)
    assert result.filled == 300
    assert book.depth() == before and book.get("s1").fills == []
    assert taker.remaining == 500 and taker.fills == []
    book.apply(taker, result)
    assert taker.remaining == 200 and book.get("s1") is None
    with pytest.raises(InvalidOrder, match="already"):
        book.apply(taker, result)  # a proposal applies once


def test_apply_rejects_a_stale_proposal_and_changes_nothing(book: OrderBook, seq: Seq) -> None:
    book.submit(seq.order("s1", SELL, 200_000, 300))
    taker = seq.order("b1", BUY, 200_000, 500)
    proposal = book.match(taker)
    book.submit(seq.order("b0", BUY, 200_000, 100))  # someone else took part of s1
    before = book.depth()
    with pytest.raises(StaleMatch):
        book.apply(taker, proposal)
    assert book.depth() == before and taker.fills == [] and taker.remaining == 500


def test_cancel_removes_the_order_lazily_and_matching_skips_it(book: OrderBook, seq: Seq) -> None:
    for oid in ("s1", "s2", "s3"):
        book.submit(seq.order(oid, SELL, 200_000, 100))
    cancelled = book.cancel("s2")
    assert cancelled.cancelled == 100 and cancelled.remaining == 0
    assert cancelled.status is OrderStatus.CANCELLED
    assert book.depth().asks == (PriceLevel(200_000, 200, 2),)
    result = book.submit(seq.order("b1", BUY, 200_000, 200))
    assert [t.maker_id for t in result.trades] == ["s1", "s3"]
    with pytest.raises(UnknownOrder):
        book.cancel("s2")


def test_cancel_of_the_only_order_removes_the_level(book: OrderBook, seq: Seq) -> None:
    book.submit(seq.order("s1", SELL, 200_000, 100))
    book.submit(seq.order("s2", SELL, 205_000, 100))
    book.cancel("s1")
    assert book.best_ask() == 205_000
    assert [level.price for level in book.depth().asks] == [205_000]


def test_cancel_partially_filled_order(book: OrderBook, seq: Seq) -> None:
    maker = seq.order("s1", SELL, 200_000, 500)
    book.submit(maker)
    book.submit(seq.order("b1", BUY, 200_000, 200))
    book.cancel("s1")
    assert (maker.filled_quantity, maker.cancelled, maker.remaining) == (200, 300, 0)


def test_rest_refuses_to_cross(book: OrderBook, seq: Seq) -> None:
    book.rest(seq.order("s1", SELL, 200_000, 100))
    with pytest.raises(CrossedBook):
        book.rest(seq.order("b1", BUY, 200_000, 100))
    book.rest(seq.order("b2", BUY, 199_000, 100))
    with pytest.raises(CrossedBook):
        book.rest(seq.order("s2", SELL, 199_000, 100))
    assert len(book) == 2


def test_rest_out_of_arrival_order_keeps_time_priority(book: OrderBook) -> None:
    late = Order("late", "a", SELL, 200_000, 100, 9, SLOT)
    early = Order("early", "b", SELL, 200_000, 100, 2, SLOT)
    middle = Order("middle", "c", SELL, 200_000, 100, 5, SLOT)
    for order in (late, early, middle):
        book.rest(order)
    assert [o.order_id for o in book.orders(SELL)] == ["early", "middle", "late"]


def test_rebuilt_order_derives_remaining_from_its_fills(book: OrderBook) -> None:
    fill = Trade("s1", "b0", 200_000, 300, SELL)
    rebuilt = Order("s1", "alice", BUY, 200_000, 1_000, 1, SLOT, fills=[fill])
    assert rebuilt.remaining == 700 and rebuilt.filled_quantity == 300
    book.rest(rebuilt)
    assert book.depth().bids == (PriceLevel(200_000, 700, 1),)


@pytest.mark.parametrize(
    ("price", "qty", "slot", "message"),
    [
        (200_500, 100, SLOT, "multiple of 1000"),
        (0, 100, SLOT, "multiple of 1000"),
        (200_000, 150, SLOT, "lot"),
        (200_000, 0, SLOT, "lot"),
        (200_000, -100, SLOT, "lot"),
        (200_000, 100, SLOT + 3600, "slot"),
    ],
)
def test_invalid_orders_are_rejected(
    book: OrderBook, price: int, qty: int, slot: int, message: str
) -> None:
    order = Order("x", "a", BUY, price, qty, 1, slot)
    with pytest.raises(InvalidOrder, match=message):
        book.match(order)
    with pytest.raises(InvalidOrder, match=message):
        book.rest(order)
    assert len(book) == 0


def test_duplicate_order_id_is_rejected(book: OrderBook, seq: Seq) -> None:
    book.submit(seq.order("b1", BUY, 200_000, 100))
    with pytest.raises(InvalidOrder, match="already"):
        book.submit(seq.order("b1", BUY, 199_000, 100))


def test_tick_and_lot_must_make_values_exact() -> None:
    with pytest.raises(ValueError):
        OrderBook(SLOT, tick=10, lot=10)
    OrderBook(SLOT, tick=10, lot=100)


def test_fill_applies_committed_trades_and_checks_them(book: OrderBook, seq: Seq) -> None:
    maker = seq.order("s1", SELL, 200_000, 500)
    book.rest(maker)
    with pytest.raises(BookError, match="price"):
        book.fill(Trade("s1", "b1", 210_000, 100, BUY))
    with pytest.raises(BookError, match="open"):
        book.fill(Trade("s1", "b1", 200_000, 600, BUY))
    with pytest.raises(BookError, match="side"):
        book.fill(Trade("s1", "b1", 200_000, 100, SELL))
    with pytest.raises(UnknownOrder):
        book.fill(Trade("nope", "b1", 200_000, 100, BUY))
    assert book.fill(Trade("s1", "b1", 200_000, 200, BUY)) is maker
    assert maker.remaining == 300
    book.fill(Trade("s1", "b2", 200_000, 300, BUY))
    assert "s1" not in book and book.best_ask() is None


def test_depth_and_queries(book: OrderBook, seq: Seq) -> None:
    book.submit(seq.order("b1", BUY, 198_000, 100, owner="alice"))
    book.submit(seq.order("b2", BUY, 199_000, 200, owner="bob"))
    book.submit(seq.order("b3", BUY, 199_000, 300, owner="alice"))
    book.submit(seq.order("s1", SELL, 201_000, 400, owner="bob"))
    depth = book.depth()
    assert depth.bids == (PriceLevel(199_000, 500, 2), PriceLevel(198_000, 100, 1))
    assert depth.asks == (PriceLevel(201_000, 400, 1),)
    assert book.depth(levels=1).bids == (PriceLevel(199_000, 500, 2),)
    assert [o.order_id for o in book.orders_of("alice")] == ["b1", "b3"]
    assert [o.order_id for o in book.orders(BUY)] == ["b2", "b3", "b1"]
    assert book.open_quantity(BUY) == 600 and book.open_quantity(SELL) == 400


def test_bookset_routes_by_slot(seq: Seq) -> None:
    books = BookSet()
    books.submit(seq.order("s1", SELL, 200_000, 100, owner="alice", slot=3600))
    books.submit(seq.order("s2", SELL, 200_000, 100, owner="alice", slot=7200))
    result = books.submit(seq.order("b1", BUY, 200_000, 200, slot=7200))
    assert [t.maker_id for t in result.trades] == ["s2"]
    assert [b.slot for b in books] == [3600, 7200]
    assert [o.order_id for o in books.orders_of("alice")] == ["s1"]
    with pytest.raises(UnknownOrder):
        books.fill(Trade("s2", "b9", 200_000, 100, BUY))
    assert books.find("s1") is books.get(3600) and books.find("nope") is None
    filled = books.fill(Trade("s1", "b9", 200_000, 100, BUY))
    assert filled.status is OrderStatus.FILLED and books.find("s1") is None
    books.submit(seq.order("s1b", SELL, 200_000, 100, owner="alice", slot=3600))
    assert books.cancel("b1").cancelled == 100
    with pytest.raises(UnknownOrder):
        books.cancel("b1")
    assert [o.order_id for o in books.close(3600)] == ["s1b"]
    assert books.get(3600) is None and len(books) == 1
