"""Properties of the pure settlement figures (market/settlement_calc.py, issue 14)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gridledger_core.market.settlement_calc import Metered, Position, TradeFacts, positions

METERS = ["m1", "m2", "m3", "m4"]
PRICE_MAX = 1_000_000


@st.composite
def trades(draw: st.DrawFn) -> list[TradeFacts]:
    result = []
    for _ in range(draw(st.integers(0, 12))):
        buyer, seller = draw(st.permutations(METERS))[:2]
        quantity = draw(st.integers(1, 50)) * 100
        price = draw(st.integers(1, PRICE_MAX // 1000)) * 1000
        result.append(TradeFacts(buyer, seller, quantity, price * quantity // 1000))
    return result


metered_maps = st.dictionaries(
    st.sampled_from(METERS),
    st.builds(Metered, st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 4)))


@given(trades(), metered_maps)
def test_figures_balance_across_the_slot(facts: list[TradeFacts],
                                         metered: dict[str, Metered]) -> None:
    figures = positions(facts, metered)
    assert [p.meter for p in figures] == sorted({t.buyer for t in facts}
                                                | {t.seller for t in facts})
    # Every Wh and µ sold was bought by someone in the same slot.
    assert sum(p.traded_net_wh for p in figures) == 0
    assert sum(p.sold_value_micro for p in figures) == sum(p.bought_value_micro
                                                           for p in figures)
    for p in figures:
        assert p.imbalance_wh == p.metered_net_wh - p.traded_net_wh
        assert p.surplus_wh - p.shortfall_wh == p.imbalance_wh
        assert min(p.surplus_wh, p.shortfall_wh) == 0
        assert 0 <= p.delivered_sold_wh <= p.sold_wh
        # What it sold and did not deliver is part of its shortfall.
        assert p.sold_wh - p.delivered_sold_wh <= p.shortfall_wh
        assert p.metered == metered.get(p.meter, Metered())


@given(st.lists(st.tuples(st.integers(1, PRICE_MAX // 1000), st.integers(1, 50)),
                min_size=1, max_size=8),
       st.integers(PRICE_MAX, 3 * PRICE_MAX), st.data())
def test_not_delivering_never_pays_a_seller(sales: list[tuple[int, int]], shortfall_price: int,
                                            data: st.DataObject) -> None:
    """A pure seller's money for the slot (trade values less the shortfall charge) never
    grows when it delivers less, and is at most 0 when it delivers nothing: with the
    shortfall price at least the price cap (genesis rule), selling energy one does not
    produce cannot be profitable."""
    facts = [TradeFacts("buyer", "seller", q * 100, p * 1000 * q * 100 // 1000)
             for p, q in sales]
    sold = sum(t.quantity_wh for t in facts)

    def money(delivered: int) -> int:
        [seller] = [p for p in positions(facts, {"seller": Metered(delivered, 0, 1)})
                    if p.meter == "seller"]
        return seller.sold_value_micro - seller.shortfall_charge_micro(shortfall_price)

    less = data.draw(st.integers(0, sold))
    more = data.draw(st.integers(less, sold))
    assert money(less) <= money(more)
    assert money(0) <= 0


def test_a_meter_that_delivers_exactly_what_it_traded_has_no_imbalance() -> None:
    facts = [TradeFacts("b", "s", 1500, 375_000)]
    s, b = None, None
    for p in positions(facts, {"s": Metered(2000, 500, 4), "b": Metered(0, 1500, 4)}):
        if p.meter == "s":
            s = p
        else:
            b = p
    assert isinstance(s, Position) and isinstance(b, Position)
    assert (s.imbalance_wh, s.delivered_sold_wh, b.imbalance_wh) == (0, 1500, 0)
