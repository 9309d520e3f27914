"""The meter-agent's pre-sale policy against a real endorser servicer and committer queries
in-process: it forecasts from its readings on the ledger, offers the configured share of
the next open slot on the right side, and a seller and a buyer so configured trade."""

from __future__ import annotations

from typing import Any

from market_helpers import NOW, SLOT
from test_endorser_market import Endorser, FakeContext, endorser  # noqa: F401 - the fixture

from gridledger.committer.v1 import committer_pb2
from gridledger.common.v1 import market_pb2
from gridledger_committer.service import CommitterServicer
from gridledger_core.ledger.errors import Code
from gridledger_core.rpc.height_notifier import HeightNotifier
from gridledger_meter_agent.ledger_client import LedgerClient
from gridledger_meter_agent.presale import PresalePolicy, PresaleTrader

# A `now` at which the next open slot (gate closure one hour before delivery) is SLOT.
BEFORE_SLOT = SLOT - 5400


class _Stub:
    """Calls a servicer's methods as a gRPC stub would (the wire is not under test here)."""

    def __init__(self, servicer: Any) -> None:
        self._servicer = servicer

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._servicer, name)
        return lambda request, timeout=None: method(request, FakeContext())


def trader(e: Endorser, meter: str, share: int) -> PresaleTrader:
    committer = CommitterServicer(e.ledger, HeightNotifier(lambda: e.ledger.height))
    client = LedgerClient(_Stub(e.servicer), _Stub(committer))  # type: ignore[arg-type]
    policy = PresalePolicy(share_percent=share, sell_price=240_000, buy_price=260_000)
    return PresaleTrader(e.ids[meter], e.ledger.genesis, client, policy)


def test_next_open_slot_respects_gate_closure(endorser: Endorser) -> None:  # noqa: F811
    t = trader(endorser, "meter-1", 50)
    assert t.next_slot(BEFORE_SLOT) == SLOT
    assert t.next_slot(SLOT - 3600) == SLOT + 3600  # SLOT's gate has just closed


def test_seller_and_buyer_offer_their_share_and_trade(endorser: Endorser) -> None:  # noqa: F811
    seller, buyer = trader(endorser, "meter-1", 50), trader(endorser, "meter-2", 25)
    assert seller.net_forecast(SLOT, NOW) == 6000
    assert buyer.net_forecast(SLOT, NOW) == -6000
    # As of the endorser's clock (NOW), for the slot the fixture's history is about.
    seller.step(NOW, slot=SLOT)
    seller.step(NOW, slot=SLOT)  # one order per slot: nothing more
    assert len(endorser.broadcaster.sent) == 1
    assert endorser.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    buyer.step(NOW, slot=SLOT)  # its option takes the resting sell
    assert endorser.commit_broadcast() == [Code.TX_VALIDATION_CODE_VALID]
    committer = CommitterServicer(endorser.ledger,
                                  HeightNotifier(lambda: endorser.ledger.height))
    trades = committer.ListTrades(committer_pb2.ListTradesRequest(slot_start=SLOT),
                                  FakeContext()).trades  # type: ignore[arg-type]
    assert [(t.price, t.quantity_wh) for t in trades] == [(240_000, 1500)]
    orders = committer.ListOrders(committer_pb2.ListOrdersRequest(meter="meter-1"),
                                  FakeContext()).orders  # type: ignore[arg-type]
    assert [(o.side, o.quantity_wh, o.remaining_wh) for o in orders] == [
        (market_pb2.ORDER_SIDE_SELL, 3000, 1500)]
