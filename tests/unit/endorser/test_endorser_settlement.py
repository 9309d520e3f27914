"""The endorser and committer views of escrow and gate closure (issue 14): an unfunded buy is
refused by RequestOptions with FAILED_PRECONDITION naming `insufficient_funds` before any
matching; once a slot's gate closure has passed (by a block's time or the clock), neither the
endorser's book (GetBook, options) nor the committer's ListOpenOrders shows its orders."""

from __future__ import annotations

import grpc
import pytest
from grpc_helpers import Aborted, FakeContext
from ledger_helpers import endorsed
from market_helpers import BUY, NOW, SELL, SLOT, terms, tx_id
from test_endorser_market import ASK, Endorser, endorser  # noqa: F401 - the fixture

from gridledger.committer.v1 import committer_pb2
from gridledger.common.v1 import market_pb2, settlement_pb2
from gridledger_committer.market_queries import list_open_orders

GATE = SLOT - 3600


def _commit(net: Endorser, txs: list[bytes], at: int) -> list[int]:
    result = net.ledger.commit(net.chain.block(txs, timestamp=at))
    net.servicer.books.on_commit(result)
    return list(result.codes)


def _open_orders(net: Endorser, now: int) -> list[str]:
    response = list_open_orders(net.ledger,
                                committer_pb2.ListOpenOrdersRequest(slot_start=SLOT),
                                FakeContext(), now=now)  # type: ignore[arg-type]
    return [o.order_id for o in response.orders]


def test_unfunded_buy_is_refused_before_matching(endorser: Endorser) -> None:  # noqa: F811
    endorser.accept("meter-1", endorser.request("meter-1", terms("meter-1", SELL, ASK, 1000)))
    endorser.commit_broadcast()
    meter2 = endorser.ids["meter-2"]
    balance = 10**12
    drain = meter2.new_transaction("transfer", settlement_pb2.Transfer(
        to="meter-3", amount_micro=balance - 100_000), timestamp=NOW)
    assert _commit(endorser, [endorsed(drain, endorser.ids["endorser-1"])], NOW) == [1]
    state = list(endorser.ledger.store.scan(b""))
    book = endorser.servicer.books.open_orders()
    with pytest.raises(Aborted) as err:  # 1,000 Wh at 250,000 µ/kWh needs 250,000 µ
        endorser.request("meter-2", terms("meter-2", BUY, ASK, 1000))
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert ": insufficient_funds: " in err.value.details, err.value.details
    assert "needs 250000 µ" in err.value.details and "100000 µ available" in err.value.details
    assert endorser.broadcaster.sent == []
    assert list(endorser.ledger.store.scan(b"")) == state
    assert endorser.servicer.books.open_orders() == book
    # What it can pay is still offered: 400 Wh needs 100,000 µ.
    option = endorser.request("meter-2", terms("meter-2", BUY, ASK, 400))
    assert option.option.payload


def test_a_block_at_gate_closure_empties_the_book_and_the_open_orders(
        endorser: Endorser) -> None:  # noqa: F811
    sell = endorser.accept("meter-1", endorser.request("meter-1",
                                                        terms("meter-1", SELL, ASK, 1000)))
    endorser.commit_broadcast()
    assert endorser.book() == ([], [(ASK, 1000, 1)])
    assert len(_open_orders(endorser, NOW)) == 1
    # The endorser's clock lags, but a block at gate closure has come: the ledger expired
    # the order, and the book and queries agree.
    assert _commit(endorser, [], GATE) == []
    assert endorser.book() == ([], [])
    assert endorser.servicer.books.open_orders() == []
    assert _open_orders(endorser, NOW) == []
    raw = endorser.ledger.get_state(f"order/{tx_id(sell)}")
    assert raw is not None and market_pb2.OrderRecord.FromString(raw).expired_wh == 1000


def test_gate_closure_by_the_clock_alone_hides_the_slot(endorser: Endorser) -> None:  # noqa: F811
    endorser.accept("meter-1", endorser.request("meter-1", terms("meter-1", SELL, ASK, 1000)))
    endorser.commit_broadcast()
    # No block since: the order is still open on the ledger, but the market has closed.
    endorser.clock[0] = GATE
    assert endorser.book() == ([], [])
    assert _open_orders(endorser, GATE) == []
    assert len(_open_orders(endorser, GATE - 1)) == 1
