"""Pre-sale participation (seed 000 claim 2, meter side): forecast this meter's surplus or
deficit for the next open delivery slot with the shared forecaster over its readings on the
ledger, and offer a share of it under a price policy.

One order per slot: the agent asks the endorser for options (RequestOptions), accepts them
by signing a PlaceOrder that carries the endorser-signed option unchanged, and submits it.
The endorser re-checks everything (forecast, allowance, band), so a policy that asks too
much is refused with the condition's name, logged and counted, and never retried for that
slot. Before signing, the agent checks the option (market/option_check.py): signed by a
consortium endorser, answering this very request (digest), with exactly the terms asked and
trades within the limit; otherwise it signs nothing, logs why and counts the condition.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from dataclasses import dataclass

import grpc
from prometheus_client import Counter

from gridledger.common.v1 import market_pb2
from gridledger.endorser.v1 import endorser_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.market.forecast import ForecastParams, Reading, forecast, history_window
from gridledger_core.market.option_check import OptionRefused, accept_option
from gridledger_core.signing_identity import SigningIdentity
from gridledger_meter_agent.ledger_client import LedgerClient, Refused, readings

log = logging.getLogger(__name__)

ORDERS = Counter("gridledger_meter_presale_orders",
                 "Pre-sale orders this meter placed, by side and result.", ["side", "result"])
OPTIONS_REFUSED = Counter("gridledger_meter_presale_options_refused",
                          "Endorser options this meter refused to sign, by condition "
                          "(option_check.CONDITIONS).", ["condition"])


@dataclass(frozen=True)
class PresalePolicy:
    share_percent: int  # of the forecast surplus (sell) or deficit (buy) offered; 0 = off
    sell_price: int  # µ/kWh asked when selling
    buy_price: int  # µ/kWh bid when buying
    every_seconds: float = 30.0
    # Place a slot's order this long before its gate closure at the latest (0: as late as
    # the next open slot). Meters that order at different leads meet on the book, where
    # orders placed in the same instant would each rest unmatched.
    lead_seconds: int = 0


def add_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("pre-sale trading")
    g.add_argument("--presale-share", type=int, default=0,
                   help="meter: percent of the forecast surplus/deficit of the next open slot "
                        "to offer (0: place no orders on its own)")
    g.add_argument("--presale-sell-price", type=int, default=120_000,
                   help="meter: price asked when selling, micro-units per kWh")
    g.add_argument("--presale-buy-price", type=int, default=180_000,
                   help="meter: price bid when buying, micro-units per kWh")
    g.add_argument("--presale-every", type=float, default=30.0,
                   help="meter: seconds between looks at the next open slot")
    g.add_argument("--presale-lead", type=int, default=0,
                   help="meter: order for the first slot whose gate closes at least this "
                        "many seconds from now (0: the next open slot)")


def policy_from(args: argparse.Namespace) -> PresalePolicy:
    if not 0 <= args.presale_share <= 100:
        raise SystemExit("--presale-share must be between 0 and 100")
    if args.presale_lead < 0:
        raise SystemExit("--presale-lead must not be negative")
    return PresalePolicy(args.presale_share, args.presale_sell_price, args.presale_buy_price,
                         args.presale_every, args.presale_lead)


class PresaleTrader:
    def __init__(self, identity: SigningIdentity, genesis: Genesis, ledger: LedgerClient,
                 policy: PresalePolicy) -> None:
        self._identity = identity
        self._genesis = genesis
        self._market = genesis.market
        self._ledger = ledger
        self._policy = policy
        self._params = ForecastParams(window_days=genesis.market.forecast_window_days)
        self._done: set[int] = set()

    def next_slot(self, now: int) -> int:
        """The earliest delivery slot whose market is still open at `now` plus the lead."""
        size = self._market.slot_seconds
        earliest = now + self._policy.lead_seconds + self._market.gate_closure_seconds + 1
        return -(-earliest // size) * size

    def net_forecast(self, slot: int, now: int) -> int:
        start, end = history_window(slot, self._market.slot_seconds, self._params)
        history = [Reading(r.interval_start, r.interval_seconds, r.produced_wh, r.consumed_wh)
                   for r in readings(self._ledger, self._identity.name, since=start)
                   if r.interval_start < end]
        return forecast(history, slot, self._market.slot_seconds, self._params,
                        as_of=now).net_wh

    def step(self, now: int | None = None, slot: int | None = None) -> None:
        """Place this meter's order for `slot` (default: the next open one) as of `now`."""
        now = int(time.time()) if now is None else now
        slot = self.next_slot(now) if slot is None else slot
        if slot in self._done:
            return
        net = self.net_forecast(slot, now)
        side = market_pb2.ORDER_SIDE_SELL if net > 0 else market_pb2.ORDER_SIDE_BUY
        lot = self._market.lot_wh
        quantity = abs(net) * self._policy.share_percent // 100 // lot * lot
        self._done.add(slot)
        side_name = "sell" if side == market_pb2.ORDER_SIDE_SELL else "buy"
        if quantity == 0:
            ORDERS.labels(side_name, "nothing_to_offer").inc()
            return
        price = self._policy.sell_price if side == market_pb2.ORDER_SIDE_SELL \
            else self._policy.buy_price
        terms = market_pb2.OrderTerms(meter=self._identity.name, side=side, slot_start=slot,
                                      price=price, quantity_wh=quantity)
        request = market_pb2.TradeRequest(terms=terms, nonce=os.urandom(16), requested_at=now)
        payload = request.SerializeToString()
        try:
            answer = self._ledger.endorser.RequestOptions(endorser_pb2.RequestOptionsRequest(
                request=self._identity.sign_envelope(payload)), timeout=self._ledger.timeout)
            accept_option(answer.option, payload, self._genesis, now)
            envelope = self._identity.new_transaction(
                "place_order", market_pb2.PlaceOrder(option=answer.option), timestamp=now)
            self._ledger.submit(envelope)
        except OptionRefused as exc:
            OPTIONS_REFUSED.labels(exc.condition).inc()
            ORDERS.labels(side_name, "option_refused").inc()
            log.warning("pre-sale %s of %d Wh for slot %d: the endorser's option was not "
                        "signed: %s", side_name, quantity, slot, exc)
            return
        except (Refused, grpc.RpcError) as exc:
            ORDERS.labels(side_name, "refused").inc()
            log.warning("pre-sale %s of %d Wh for slot %d refused: %s", side_name, quantity,
                        slot, exc)
            return
        ORDERS.labels(side_name, "placed").inc()
        log.info("placed a pre-sale %s of %d Wh at %d for slot %d", side_name, quantity, price,
                 slot)

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self._policy.every_seconds):
            try:
                self.step()
            except grpc.RpcError as exc:  # the committer or endorser is away: next round
                log.info("pre-sale step skipped: %s", exc.code())  # type: ignore[attr-defined]
