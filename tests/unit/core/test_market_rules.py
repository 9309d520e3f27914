"""Ledger rules of the pre-sale market, with blocks cut by ChainBuilder (no consensus proof):
fills recorded on both orders, partial fills, over-fill, and forged or replayed options that
are invalid even though an endorser signed them. Every invalid transaction changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ledger_helpers import ChainBuilder, endorsed, identity, reading
from market_helpers import (
    BUY,
    NOW,
    SELL,
    SLOT,
    cancel,
    history,
    option,
    place,
    terms,
    tx_id,
)

from gridledger.common.v1 import block_pb2, envelope_pb2, market_pb2, transaction_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.ledger import schema
from gridledger_core.ledger.errors import Code, code_name
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.market import ledger_view as view
from gridledger_core.signing_identity import SigningIdentity
from gridledger_core.storage import MemoryStore

VALID = Code.TX_VALIDATION_CODE_VALID
CONFLICT = Code.TX_VALIDATION_CODE_STATE_CONFLICT
INVALID = Code.TX_VALIDATION_CODE_INVALID_BODY
ENDORSEMENT = Code.TX_VALIDATION_CODE_ENDORSEMENT_FAILURE
NOT_AUTHORIZED = Code.TX_VALIDATION_CODE_NOT_AUTHORIZED
ASK = 250_000  # µ/kWh


def accept_proof(block: block_pb2.Block, header: block_pb2.BlockHeader,
                 previous: bytes | None) -> None:
    """Consensus proofs are the consensus core's tests; these are about the market rules."""


@dataclass
class Market:
    ledger: Ledger
    chain: ChainBuilder
    endorser: SigningIdentity
    seller: SigningIdentity  # meter-1: surplus 6,000 Wh in SLOT, allowance 6,600
    buyer: SigningIdentity  # meter-2: deficit 6,000 Wh, allowance 6,600
    other: SigningIdentity  # meter-3: deficit 2,000 Wh, allowance 2,200

    def commit(self, *envelopes: envelope_pb2.SignedEnvelope,
               at: int = NOW) -> list[tuple[int, str]]:
        result = self.ledger.commit(self.chain.block(
            [endorsed(e, self.endorser) for e in envelopes], timestamp=at))
        self.check_committed_totals()
        return list(zip(result.codes, result.messages, strict=True))

    def check_committed_totals(self) -> None:
        """The running committed-energy totals equal their definition, recomputed from the
        orders, for every meter and side (the preset conditions trust the totals)."""
        state = StateOverlay(self.ledger.store)
        for meter in ("meter-1", "meter-2", "meter-3"):
            for side in (SELL, BUY):
                assert view.committed_wh(state, meter, SLOT, side) == \
                    view.committed_wh_by_scan(state, meter, SLOT, side), (meter, side)

    def order(self, order_id: str) -> market_pb2.OrderRecord:
        record = view.load_order(StateOverlay(self.ledger.store), order_id)
        assert record is not None, order_id
        return record

    def state(self) -> list[tuple[bytes, bytes]]:
        return list(self.ledger.store.scan(schema.STATE))

    def rest_sell(self, quantity: int = 3000, price: int = ASK) -> str:
        env = place(self.seller, option(self.endorser, terms("meter-1", SELL, price, quantity)))
        assert self.commit(env) == [(VALID, "")]
        return tx_id(env)


@pytest.fixture()
def market(genesis: Genesis, consortium_dir: Path) -> Iterator[Market]:
    ids = {n: identity(consortium_dir, n) for n in ("endorser-1", "meter-1", "meter-2", "meter-3")}
    m = Market(Ledger(MemoryStore(), genesis, accept_proof), ChainBuilder(), ids["endorser-1"],
               ids["meter-1"], ids["meter-2"], ids["meter-3"])
    txs = (history(m.seller, m.endorser, SLOT, produced=2000, consumed=500)
           + history(m.buyer, m.endorser, SLOT, produced=0, consumed=1500)
           + history(m.other, m.endorser, SLOT, produced=100, consumed=600))
    result = m.ledger.commit(m.chain.block(txs, timestamp=NOW))
    assert set(result.codes) == {VALID}, set(result.messages)
    yield m


def test_resting_order_takes_partial_fills_and_records_each(market: Market) -> None:
    maker_id = market.rest_sell(3000)
    maker = market.order(maker_id)
    assert (maker.remaining_wh, maker.owner, maker.side, len(maker.fills)) == (3000, "meter-1",
                                                                                SELL, 0)
    book_key = view.book_key(maker)
    assert market.ledger.get_state(book_key) == maker_id.encode()

    # A buy at a higher limit trades 1,000 Wh at the resting order's price.
    first = place(market.buyer, option(market.endorser, terms("meter-2", BUY, 260_000, 1000),
                                       [(maker_id, "meter-1", ASK, 1000)]))
    assert market.commit(first) == [(VALID, "")]
    maker = market.order(maker_id)
    assert maker.remaining_wh == 2000 and [f.quantity_wh for f in maker.fills] == [1000]
    trade = maker.fills[0]
    assert (trade.buyer, trade.seller, trade.price, trade.buy_order_id, trade.sell_order_id) == (
        "meter-2", "meter-1", ASK, tx_id(first), maker_id)
    taker = market.order(tx_id(first))
    assert (taker.remaining_wh, list(taker.fills)) == (0, [trade])
    assert market.ledger.get_state(schema.trade_key(SLOT, trade.sequence)) == \
        trade.SerializeToString(deterministic=True)

    # A larger buy takes the 2,000 Wh left; its remainder (200 Wh) rests as its order.
    second = place(market.other, option(market.endorser, terms("meter-3", BUY, ASK, 2200),
                                        [(maker_id, "meter-1", ASK, 2000)]))
    assert market.commit(second) == [(VALID, "")]
    maker = market.order(maker_id)
    assert maker.remaining_wh == 0 and [f.quantity_wh for f in maker.fills] == [1000, 2000]
    assert market.ledger.get_state(book_key) is None  # filled: out of the book
    rest = market.order(tx_id(second))
    assert (rest.remaining_wh, rest.quantity_wh, rest.cancelled_wh) == (200, 2200, 0)
    assert market.ledger.get_state(view.book_key(rest)) == tx_id(second).encode()
    # Energy is conserved on every order: quantity = filled + remaining + cancelled.
    for record in (maker, taker, rest):
        filled = sum(f.quantity_wh for f in record.fills)
        assert record.quantity_wh == filled + record.remaining_wh + record.cancelled_wh
    # Every trade is indexed for both parties.
    for meter, count in (("meter-1", 2), ("meter-2", 1), ("meter-3", 1)):
        assert len(list(market.ledger.scan_state(schema.trade_meter_prefix(meter)))) == count


def test_two_options_on_one_order_in_one_block_cannot_over_fill(market: Market) -> None:
    maker_id = market.rest_sell(3000)
    a = place(market.buyer, option(market.endorser, terms("meter-2", BUY, ASK, 2000),
                                   [(maker_id, "meter-1", ASK, 2000)]))
    b = place(market.other, option(market.endorser, terms("meter-3", BUY, ASK, 2000),
                                   [(maker_id, "meter-1", ASK, 2000)]))
    results = market.commit(a, b)
    assert results[0] == (VALID, "")
    assert results[1][0] == CONFLICT and "over-fill" in results[1][1]
    assert market.order(maker_id).remaining_wh == 1000
    assert view.load_order(StateOverlay(market.ledger.store), tx_id(b)) is None


def test_one_option_naming_an_order_twice_cannot_over_fill(market: Market) -> None:
    maker_id = market.rest_sell(3000)
    env = place(market.buyer, option(market.endorser, terms("meter-2", BUY, ASK, 4000),
                                     [(maker_id, "meter-1", ASK, 2000),
                                      (maker_id, "meter-1", ASK, 2000)]))
    before = market.state()
    [(code, message)] = market.commit(env)
    assert code == CONFLICT and "over-fill" in message
    assert market.state() == before


FORGERIES = {
    # case: (expected code, text in the message)
    "option_signed_by_a_meter": (ENDORSEMENT, "not an endorser"),
    "option_signature_zeroed": (ENDORSEMENT, "does not verify"),
    "option_bytes_changed_after_signing": (ENDORSEMENT, "does not verify"),
    "option_names_another_endorser": (ENDORSEMENT, "names endorser"),
    "option_of_another_meter": (NOT_AUTHORIZED, "not_own_account"),
    "trade_not_at_makers_price": (INVALID, "not the resting order's price"),
    "trade_beyond_takers_limit": (INVALID, "beyond the limit"),
    "trade_with_unknown_order": (CONFLICT, "not on the ledger"),
    "trade_with_wrong_counterparty": (INVALID, "belongs to meter-1"),
    "trade_with_same_side_order": (INVALID, "not on the other side"),
    "quantities_do_not_add_up": (INVALID, "not the ordered"),
    "expired": (CONFLICT, "expired"),
    "remainder_crosses_the_book": (CONFLICT, "would cross"),
    "quantity_above_forecast": (CONFLICT, "quantity_above_forecast"),
    "slot_closed_at_block_time": (CONFLICT, "slot_not_open"),
    "cancel_without_own_order": (INVALID, "not the taker's own"),
}


@pytest.mark.parametrize("case", sorted(FORGERIES))
def test_forged_option_is_invalid_even_if_an_endorser_signed_it(market: Market,
                                                                case: str) -> None:
    maker_id = market.rest_sell(3000)
    e, buyer = market.endorser, market.buyer
    buy = terms("meter-2", BUY, ASK, 1000)
    trade = [(maker_id, "meter-1", ASK, 1000)]
    at = NOW
    signer = buyer
    if case == "option_signed_by_a_meter":
        forged = market_pb2.TradeOption(option_id="x1", endorser="meter-3", terms=buy,
                                        rest_wh=1000, expires_at=NOW + 30)
        env = market.other.sign_envelope(forged.SerializeToString())
    elif case == "option_signature_zeroed":
        env = option(e, buy, trade)
        env.signature = bytes(64)
    elif case == "option_bytes_changed_after_signing":
        env = option(e, buy, trade)
        changed = market_pb2.TradeOption.FromString(env.payload)
        changed.trades[0].price = 1000  # a much better price for the buyer
        env.payload = changed.SerializeToString()
    elif case == "option_names_another_endorser":
        body = market_pb2.TradeOption.FromString(option(e, buy, trade).payload)
        body.endorser = "endorser-2"
        env = e.sign_envelope(body.SerializeToString())
    elif case == "option_of_another_meter":
        env, signer = option(e, buy, trade), market.other
    elif case == "trade_not_at_makers_price":
        env = option(e, buy, [(maker_id, "meter-1", 240_000, 1000)])
    elif case == "trade_beyond_takers_limit":
        env = option(e, terms("meter-2", BUY, 240_000, 1000), trade)
    elif case == "trade_with_unknown_order":
        env = option(e, buy, [("ab" * 32, "meter-1", ASK, 1000)])
    elif case == "trade_with_wrong_counterparty":
        env = option(e, buy, [(maker_id, "meter-3", ASK, 1000)])
    elif case == "trade_with_same_side_order":
        resting_buy = place(buyer, option(e, terms("meter-2", BUY, 200_000, 500)))
        assert market.commit(resting_buy) == [(VALID, "")]
        signer = market.other
        env = option(e, terms("meter-3", BUY, ASK, 1000),
                     [(tx_id(resting_buy), "meter-2", 200_000, 1000)])
    elif case == "quantities_do_not_add_up":
        env = option(e, buy, trade, rest=500)
    elif case == "expired":
        env = option(e, buy, trade, expires_at=NOW - 1)
    elif case == "remainder_crosses_the_book":
        env = option(e, buy)  # rests 1,000 Wh at ASK although a sell at ASK is open
    elif case == "quantity_above_forecast":
        env = option(e, terms("meter-2", BUY, ASK, 6700), [(maker_id, "meter-1", ASK, 3000)])
    elif case == "slot_closed_at_block_time":
        env, at = option(e, buy, trade, expires_at=SLOT), SLOT - 3600
    elif case == "cancel_without_own_order":
        env = option(e, buy, [(maker_id, "meter-1", ASK, 500)], cancelled=500, rest=0)
    else:
        raise AssertionError(case)
    if at != NOW:  # the block prologue expires the slot's orders at gate closure (issue 14)
        assert market.commit(at=at) == []
    open_wh = market.order(maker_id).remaining_wh
    before = market.state()
    [(code, message)] = market.commit(place(signer, env), at=at)
    expected_code, text = FORGERIES[case]
    assert (code_name(code), text in message) == (code_name(expected_code), True), message
    assert market.state() == before
    assert market.order(maker_id).remaining_wh == open_wh == (3000 if at == NOW else 0)


def test_replayed_option_and_replayed_transaction_are_invalid(market: Market) -> None:
    maker_id = market.rest_sell(3000)
    env = option(market.endorser, terms("meter-2", BUY, ASK, 1000),
                 [(maker_id, "meter-1", ASK, 1000)])
    first = place(market.buyer, env)
    assert market.commit(first) == [(VALID, "")]
    before = market.state()
    # The same option in a new transaction (new nonce, freshly signed by the same meter).
    [(code, message)] = market.commit(place(market.buyer, env))
    assert code == CONFLICT and "already used" in message
    # The very same transaction again.
    [(code, _)] = market.commit(first)
    assert code == Code.TX_VALIDATION_CODE_DUPLICATE_TXID
    assert market.state() == before
    assert market.order(maker_id).remaining_wh == 2000


def test_committed_quantity_counts_against_the_forecast(market: Market) -> None:
    market.rest_sell(6000, price=300_000)
    # 6,000 of the 6,600 Wh allowance is committed: 700 more is refused, 600 accepted.
    more = place(market.seller, option(market.endorser, terms("meter-1", SELL, 300_000, 700)))
    [(code, message)] = market.commit(more)
    assert code == CONFLICT and "left 600 Wh" in message
    ok = place(market.seller, option(market.endorser, terms("meter-1", SELL, 300_000, 600)))
    assert market.commit(ok) == [(VALID, "")]


def test_cancel_rules(market: Market) -> None:
    maker_id = market.rest_sell(3000)
    [(code, _)] = market.commit(cancel(market.buyer, maker_id))
    assert code == NOT_AUTHORIZED
    partial = place(market.buyer, option(market.endorser, terms("meter-2", BUY, ASK, 1000),
                                         [(maker_id, "meter-1", ASK, 1000)]))
    assert market.commit(partial) == [(VALID, "")]
    assert market.commit(cancel(market.seller, maker_id)) == [(VALID, "")]
    record = market.order(maker_id)
    assert (record.remaining_wh, record.cancelled_wh, len(record.fills)) == (0, 2000, 1)
    assert market.ledger.get_state(view.book_key(record)) is None
    [(code, message)] = market.commit(cancel(market.seller, maker_id))
    assert code == CONFLICT and "nothing open" in message
    # Cancelled quantity no longer counts against the forecast: 6,600 - 1,000 filled is free.
    again = place(market.seller, option(market.endorser, terms("meter-1", SELL, ASK, 5600)))
    assert market.commit(again) == [(VALID, "")]
    # At gate closure the order is final (and its open quantity expired with the block).
    [(code, message)] = market.commit(cancel(market.seller, tx_id(again)), at=SLOT - 3600)
    assert code == CONFLICT and "closed" in message


def test_self_trade_is_invalid_and_prevention_cancels_the_remainder(
        market: Market, consortium_dir: Path) -> None:
    # On a fresh ledger, meter-3 first sells on a surplus history (onboarding, days 2-7 before
    # a slot 23 h ahead; the most recent day is still missing) ...
    e, meter = market.endorser, identity(consortium_dir, "meter-3")
    fresh = Market(Ledger(MemoryStore(), market.ledger.genesis, accept_proof), ChainBuilder(),
                   e, market.seller, market.buyer, meter)
    slot = (NOW // 3600 + 23) * 3600
    older = history(meter, e, slot, produced=2000, consumed=0)
    older_env = envelope_pb2.EndorsedTransaction.FromString(older[0]).envelope
    body = transaction_pb2.Transaction.FromString(older_env.payload).history_readings
    del body.readings[:4]  # day 1 is yet to come, live
    older = [endorsed(meter.new_transaction("history_readings", body, timestamp=NOW - 60), e)]
    fresh.ledger.commit(fresh.chain.block(older, timestamp=NOW))
    sell = place(meter, option(e, terms("meter-3", SELL, ASK, 1000, slot)))
    assert fresh.commit(sell) == [(VALID, "")]
    # ... then the last hour's live readings (day 1, weighted most) show a large deficit: the
    # forecast becomes a deficit (history cannot do this any more once the meter traded).
    day1 = [endorsed(meter.new_transaction("meter_reading", reading(
        "meter-3", slot - 86400 + q * 900, 0, 20_000), timestamp=NOW - 60), e)
        for q in range(4)]
    fresh.ledger.commit(fresh.chain.block(day1, timestamp=NOW))
    own = [(tx_id(sell), "meter-3", ASK, 500)]
    [(code, message)] = fresh.commit(place(meter, option(e, terms("meter-3", BUY, ASK, 500,
                                                                  slot), own)))
    assert code == INVALID and "self-trade" in message
    # Self-trade prevention: the remainder that would meet the own order is cancelled.
    stp = place(meter, option(e, terms("meter-3", BUY, ASK, 500, slot), cancelled=500, rest=0))
    assert fresh.commit(stp) == [(VALID, "")]
    record = fresh.order(tx_id(stp))
    assert (record.remaining_wh, record.cancelled_wh) == (0, 500)
    assert fresh.order(tx_id(sell)).remaining_wh == 1000


def test_two_ledgers_agree_on_market_state(market: Market, genesis: Genesis,
                                           consortium_dir: Path) -> None:
    maker_id = market.rest_sell(3000)
    take = place(market.buyer, option(market.endorser, terms("meter-2", BUY, ASK, 1500),
                                      [(maker_id, "meter-1", ASK, 1500)]))
    market.commit(take, cancel(market.seller, maker_id))
    replica = Ledger(MemoryStore(), genesis, accept_proof)
    for number in range(market.ledger.height):
        found = market.ledger.get_block(number)
        assert found is not None
        assert replica.commit(found[0]).state_root == found[1].state_root
    assert list(replica.store.scan(b"")) == list(market.ledger.store.scan(b""))
