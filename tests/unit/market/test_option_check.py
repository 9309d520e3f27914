"""option_check: the comparison a meter makes before it signs an option (issue 14 item 8).

An honest answer passes; any option that does not answer this exact request with its exact
terms is refused with its condition named, whatever else is right about it."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridledger.common.v1 import market_pb2
from gridledger_core.market.option_check import (
    DIGEST,
    PRICE,
    QUANTITY,
    TERMS,
    OptionRefused,
    check_option,
    request_digest,
)

BUY, SELL = market_pb2.ORDER_SIDE_BUY, market_pb2.ORDER_SIDE_SELL
SLOT = 1_800_000_000


def request(meter: str = "meter-1", side: int = BUY, price: int = 200_000,
            quantity: int = 3000, slot: int = SLOT) -> bytes:
    terms = market_pb2.OrderTerms(meter=meter, side=side, slot_start=slot, price=price,
                                  quantity_wh=quantity)
    return market_pb2.TradeRequest(terms=terms, nonce=os.urandom(16),
                                   requested_at=SLOT - 7200).SerializeToString()


def answer(payload: bytes, trades: tuple[tuple[int, int], ...] = ((190_000, 1000),),
           cancelled: int = 0) -> market_pb2.TradeOption:
    """The honest endorser's option for `payload`: trades (price, Wh), the rest rests."""
    terms = market_pb2.TradeRequest.FromString(payload).terms
    traded = sum(q for _, q in trades)
    return market_pb2.TradeOption(
        option_id=os.urandom(8).hex(), endorser="endorser-1", terms=terms,
        trades=[market_pb2.ProposedTrade(maker_order_id=f"o{i}", maker="meter-2", price=p,
                                         quantity_wh=q) for i, (p, q) in enumerate(trades)],
        rest_wh=terms.quantity_wh - traded - cancelled, cancelled_wh=cancelled,
        request_digest=request_digest(payload))


def refused(payload: bytes, option: market_pb2.TradeOption) -> str:
    with pytest.raises(OptionRefused) as info:
        check_option(payload, option)
    return info.value.condition


def test_honest_answers_pass() -> None:
    buy = request()
    check_option(buy, answer(buy))
    check_option(buy, answer(buy, trades=((200_000, 1000), (150_000, 2000))))
    check_option(buy, answer(buy, trades=(), cancelled=500))
    sell = request(side=SELL, price=100_000)
    check_option(sell, answer(sell, trades=((100_000, 3000),)))


def test_option_for_another_meters_request_is_refused() -> None:
    mine, theirs = request("meter-1"), request("meter-2")
    assert refused(mine, answer(theirs)) == DIGEST


def test_replayed_option_of_an_earlier_identical_request_is_refused() -> None:
    earlier, now = request(), request()  # same terms, new nonce
    assert refused(now, answer(earlier)) == DIGEST


def test_option_without_digest_is_refused() -> None:
    payload = request()
    option = answer(payload)
    option.ClearField("request_digest")
    assert refused(payload, option) == DIGEST


@pytest.mark.parametrize("field,value", [
    ("meter", "meter-2"), ("side", SELL), ("slot_start", SLOT + 3600), ("price", 250_000),
    ("quantity_wh", 2000)])
def test_changed_terms_with_the_right_digest_are_refused(field: str, value: object) -> None:
    payload = request()
    option = answer(payload, trades=())
    setattr(option.terms, field, value)
    assert refused(payload, option) == TERMS


def test_trade_beyond_the_limit_is_refused() -> None:
    buy = request(price=200_000)
    assert refused(buy, answer(buy, trades=((201_000, 1000),))) == PRICE
    sell = request(side=SELL, price=100_000)
    assert refused(sell, answer(sell, trades=((99_000, 1000),))) == PRICE


def test_quantities_must_add_up() -> None:
    payload = request(quantity=3000)
    option = answer(payload)
    option.rest_wh += 100
    assert refused(payload, option) == QUANTITY
    option = answer(payload, trades=((190_000, 0),))
    assert refused(payload, option) == QUANTITY


@given(field=st.sampled_from(["meter", "side", "slot_start", "price", "quantity_wh"]),
       delta=st.integers(min_value=1, max_value=10**6))
def test_any_term_change_is_refused(field: str, delta: int) -> None:
    payload = request()
    option = answer(payload, trades=())
    if field == "meter":
        option.terms.meter += str(delta)
    elif field == "side":
        option.terms.side = SELL
    else:
        setattr(option.terms, field, getattr(option.terms, field) + delta)
    assert refused(payload, option) == TERMS
