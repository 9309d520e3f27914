"""Builders for pre-sale market tests: reading history, signed requests and options, orders.

Times: ``NOW`` is a fixed block time; ``SLOT`` is an hourly delivery slot three hours later
(its market is open at NOW: it opened two days before delivery and closes one hour before).
The default genesis has 900 s readings, 3600 s slots, a 7-day forecast window and 10 %
tolerance, tick 1,000 µ/kWh and lot 100 Wh.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from ledger_helpers import ChainBuilder, endorsed

from gridledger.common.v1 import block_pb2, envelope_pb2, market_pb2, settlement_pb2
from gridledger_core.signing_identity import SigningIdentity, envelope_tx_id

HOUR = 3600
NOW = (int(time.time()) // HOUR) * HOUR + 600  # ten minutes into the current hour
SLOT = (NOW // HOUR + 3) * HOUR
BUY = market_pb2.ORDER_SIDE_BUY
SELL = market_pb2.ORDER_SIDE_SELL


def history(meter: SigningIdentity, endorser: SigningIdentity, slot: int, produced: int,
            consumed: int, days: int = 7) -> list[bytes]:
    """Readings covering the forecast's span on each of ``days`` days before ``slot``: the
    forecast is then exactly 4 * (produced - consumed) Wh for the hourly slot. They are older
    than the readings submission window, so they come as the meter's onboarding history (one
    HistoryReadings transaction, admitted only before its first order)."""
    entries = [settlement_pb2.MeterReadingEntry(
        interval_start=slot - days_back * 86400 + quarter * 900, produced_wh=produced,
        consumed_wh=consumed) for days_back in range(1, days + 1) for quarter in range(4)]
    env = meter.new_transaction("history_readings",
                                settlement_pb2.HistoryReadings(readings=entries),
                                timestamp=NOW - 60)
    return [endorsed(env, endorser)]


def terms(meter: str, side: int, price: int, quantity: int,
          slot: int = SLOT) -> market_pb2.OrderTerms:
    return market_pb2.OrderTerms(meter=meter, side=side, slot_start=slot, price=price,
                                 quantity_wh=quantity)


def signed_request(signer: SigningIdentity, order: market_pb2.OrderTerms,
                   at: int = NOW) -> envelope_pb2.SignedEnvelope:
    request = market_pb2.TradeRequest(terms=order, nonce=os.urandom(16), requested_at=at)
    return signer.sign_envelope(request.SerializeToString())


def option(endorser: SigningIdentity, order: market_pb2.OrderTerms,
           trades: Sequence[tuple[str, str, int, int]] = (), rest: int | None = None,
           cancelled: int = 0, expires_at: int = NOW + 30,
           option_id: str | None = None) -> envelope_pb2.SignedEnvelope:
    """An option signed by ``endorser`` exactly as given (it may be a forgery: the ledger rule
    must judge it, not the builder). ``trades``: (maker order id, maker, price, Wh)."""
    traded = sum(t[3] for t in trades)
    body = market_pb2.TradeOption(
        option_id=option_id or os.urandom(16).hex(), endorser=endorser.name, terms=order,
        trades=[market_pb2.ProposedTrade(maker_order_id=m, maker=o, price=p, quantity_wh=q)
                for m, o, p, q in trades],
        rest_wh=order.quantity_wh - traded - cancelled if rest is None else rest,
        cancelled_wh=cancelled, issued_at=NOW, expires_at=expires_at)
    return endorser.sign_envelope(body.SerializeToString())


def place(meter: SigningIdentity, option_envelope: envelope_pb2.SignedEnvelope
          ) -> envelope_pb2.SignedEnvelope:
    return meter.new_transaction("place_order", market_pb2.PlaceOrder(option=option_envelope),
                                 timestamp=NOW)


def cancel(meter: SigningIdentity, order_id: str) -> envelope_pb2.SignedEnvelope:
    return meter.new_transaction("cancel_order", market_pb2.CancelOrder(order_id=order_id),
                                 timestamp=NOW)


tx_id = envelope_tx_id  # the shared helper, under the tests' short name


def block(chain: ChainBuilder, txs: list[bytes], at: int = NOW) -> block_pb2.Block:
    return chain.block(txs, timestamp=at)
