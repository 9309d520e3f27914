"""Pre-sale participation (seed 000 claim 2, meter side): forecast this meter's surplus or
deficit for the next open delivery slot with the shared forecaster over its readings on the
ledger, and offer a share of it under a price policy.

One order per slot: the agent asks the endorser for options (RequestOptions), accepts them
by signing a PlaceOrder that carries the endorser-signed option unchanged, and submits it.
The endorser re-checks everything (forecast, allowance, band), so a policy that asks too
much is refused with the condition's name, logged and counted, and not retried for that
slot (unless it answers a request sent again, which is then made anew once). Before
signing, the agent checks the option (market/option_check.py): signed by a
consortium endorser, answering this very request (digest), with exactly the terms asked and
trades within the limit; otherwise it signs nothing, logs why and counts the condition.

A refusal for now is not the end of the slot (issue 15: clients back off with jitter). The
endorser at its admission bound or holding the member to its share (RESOURCE_EXHAUSTED, with
a retry hint), energy held by others' options (ABORTED), or an endorser away (UNAVAILABLE,
DEADLINE_EXCEEDED): the agent asks again after the hint plus jitter (longer while it
repeats), as long as the slot's market is open; so is a committer that cannot answer the
forecast. It sends the very same signed request again while that is fresh (the endorser
answers it with the option it gave before, if the answer was lost on the way: no second
hold, and no lapse of the first charged to the member), a new one after that or when the
endorser no longer has the answer. The request is journalled before it first leaves, so an
agent restarted before the answer reached it sends the same request again too (while fresh;
a slot other than the next whose request went stale meanwhile is not taken up again, as an
agent without a journal would not).
A PlaceOrder whose submission was never acknowledged is sent
again as is (the ledger deduplicates by tx id) while its option is valid (not after the
endorser said the option is dead: a maker filled or cancelled). Then only the chain can say
whether it got in: once the committer's last block is past the option's expiry (block times
never go back), the agent looks the transaction up there and asks for a new option only if it
is not VALID; until then it waits (looking again every few seconds, and once more at gate
closure). Before its first request for a slot it asks the committer whether this meter already
has an order there (an earlier run of the agent). So a slot gets no second order whatever the
clocks, also across restarts: every PlaceOrder is journalled (placements.py) before it is
first sent, and a restarted agent resumes it the same way.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import grpc
from prometheus_client import Counter

from gridledger.committer.v1 import committer_pb2
from gridledger.common.v1 import envelope_pb2, market_pb2
from gridledger.endorser.v1 import endorser_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.errors import Code
from gridledger_core.market.forecast import ForecastParams, Reading, forecast, history_window
from gridledger_core.market.option_check import OptionRefused, accept_option
from gridledger_core.rpc.backoff import Backoff, retry_after_ms
from gridledger_core.signing_identity import SigningIdentity, envelope_tx_id
from gridledger_meter_agent.ledger_client import TRANSIENT, LedgerClient, Refused, readings
from gridledger_meter_agent.loop_health import UNHEALTHY_AFTER, FailingPasses
from gridledger_meter_agent.placements import PendingRequest, Placement, PlacementJournal

log = logging.getLogger(__name__)

ORDERS = Counter("gridledger_meter_presale_orders",
                 "Pre-sale orders this meter placed, by side and result.", ["side", "result"])
OPTIONS_REFUSED = Counter("gridledger_meter_presale_options_refused",
                          "Endorser options this meter refused to sign, by condition "
                          "(option_check.CONDITIONS).", ["condition"])
RETRIES = Counter("gridledger_meter_presale_retries",
                  "Pre-sale attempts refused for now and tried again later, by status.",
                  ["status"])

# Refused for now, not for good: ask again later.
FOR_NOW = TRANSIENT | {grpc.StatusCode.ABORTED}  # ABORTED: energy others' options hold
# Trading is not urgent within a slot's open market: start at a second, at most two minutes
# (a member held to its share is told to come back within about one).
RETRY_BACKOFF = Backoff(base_s=1.0, cap_s=120.0)
CHAIN_POLL_S = 2.0  # while waiting for a block past an option's expiry
# A trade request is sent again as is for this long after it was made: within the
# endorser's default 30 s request window with up to 10 s between the two clocks.
REQUEST_REUSE_S = 20
# The endorser's answer to a request sent again that it cannot answer the same way: it
# dropped the answer (ALREADY_EXISTS) or finds the request stale (FAILED_PRECONDITION).
REQUEST_SPENT = {grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION}


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


class Outcome(Enum):
    PLACED = "placed"
    NOTHING_TO_OFFER = "nothing_to_offer"
    OPTION_REFUSED = "option_refused"  # this agent would not sign the endorser's option
    REFUSED = "refused"  # for good: a preset condition, a rule
    GATE_CLOSED = "gate_closed"  # refused for now until the slot's market closed
    LATER = "later"  # refused for now: asked again after a backoff


@dataclass
class _Retry:
    """A slot refused for now: when to try again, and a PlaceOrder not yet acknowledged."""

    attempts: int
    not_before: float
    placing: envelope_pb2.SignedEnvelope | None = None
    option_expires_at: int = 0
    side_name: str = ""
    resend: bool = True  # False once the endorser said its option is dead
    request: envelope_pb2.SignedEnvelope | None = None  # the trade request last sent
    requested_at: int = 0


class PresaleTrader:
    def __init__(self, identity: SigningIdentity, genesis: Genesis, ledger: LedgerClient,
                 policy: PresalePolicy, backoff: Backoff = RETRY_BACKOFF,
                 journal: PlacementJournal | None = None) -> None:
        """`journal`: where signed trade requests and PlaceOrders are kept until their slot
        closes (the agent's data directory), so a restarted agent resumes them instead of
        asking or ordering again."""
        self._identity = identity
        self._genesis = genesis
        self._market = genesis.market
        self._ledger = ledger
        self._policy = policy
        self._backoff = backoff
        self._params = ForecastParams(window_days=genesis.market.forecast_window_days)
        self._done: set[int] = set()
        self._retries: dict[int, _Retry] = {}  # slot -> its next attempt
        self._looked_up: set[int] = set()  # slots the ledger showed no order of ours in
        self._journal = journal
        self._restored = journal is None

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

    def next_retry(self) -> float | None:
        """When the earliest slot refused for now is due again (wall-clock seconds)."""
        return min((r.not_before for r in self._retries.values()), default=None)

    def step(self, now: float | None = None, slot: int | None = None) -> Outcome | None:
        """Place this meter's order for `slot` (default: the next open one) as of `now`, and
        try again every slot refused for now whose backoff has passed. Returns what became
        of `slot` (None: nothing was due for it)."""
        now = time.time() if now is None else now
        slot = self.next_slot(int(now)) if slot is None else slot
        # Slots whose market closed need no memory (bounded by the open slots).
        horizon = now + self._market.gate_closure_seconds
        self._done = {s for s in self._done if s > horizon}
        self._looked_up = {s for s in self._looked_up if s > horizon}
        if self._journal is not None:
            if not self._restored:
                self._restore(int(horizon), now)
            self._journal.forget_up_to(int(horizon))
        for waiting in sorted(self._retries):
            if waiting != slot:
                self._attempt(waiting, now)
        return self._attempt(slot, now)

    def _attempt(self, slot: int, now: float) -> Outcome | None:
        closed = now >= self._market.gate_closure(slot)
        if slot in self._done or (closed and slot not in self._retries):
            return None
        retry = self._retries.get(slot)
        if retry is not None and now < retry.not_before:
            return None
        try:
            if retry is not None and closed:
                outcome = self._gate_closed(slot, retry)
            elif retry is not None and retry.placing is not None:
                outcome = self._resume_placing(slot, retry, int(now))
            else:
                outcome = self._order(slot, int(now))
        except grpc.RpcError as exc:  # a committer's answer is missing (forecast, chain)
            outcome = self._later(slot, f"pre-sale for slot {slot}", exc, now)
        if outcome is Outcome.LATER:
            return outcome
        self._retries.pop(slot, None)
        self._done.add(slot)
        if self._journal is not None:  # settled: a restart must not ask for it again
            self._journal.forget_request(slot)
        return outcome

    def _order(self, slot: int, now: int) -> Outcome:
        if slot not in self._looked_up:
            if self._has_order(slot):  # placed before (an earlier run of the agent)
                return Outcome.PLACED
            self._looked_up.add(slot)  # only once answered (a failure retries the look)
        retry = self._retries.get(slot)
        again = retry is not None and retry.request is not None and \
            now - retry.requested_at <= REQUEST_REUSE_S
        if again:
            assert retry is not None and retry.request is not None
            signed = retry.request
            terms = market_pb2.TradeRequest.FromString(signed.payload).terms
        else:
            terms_or_none = self._terms(slot, now)
            if terms_or_none is None:
                return Outcome.NOTHING_TO_OFFER
            terms = terms_or_none
            request = market_pb2.TradeRequest(terms=terms, nonce=os.urandom(16),
                                              requested_at=now)
            signed = self._identity.sign_envelope(request.SerializeToString())
            if self._journal is not None:  # before it leaves: a restart sends it again
                self._journal.record_request(PendingRequest(slot, signed, now))
        side_name = "sell" if terms.side == market_pb2.ORDER_SIDE_SELL else "buy"
        what = f"pre-sale {side_name} of {terms.quantity_wh} Wh at {terms.price} for slot {slot}"
        try:
            answer = self._ledger.endorser.RequestOptions(endorser_pb2.RequestOptionsRequest(
                request=signed), timeout=self._ledger.timeout)
            accept_option(answer.option, signed.payload, self._genesis, now)
        except OptionRefused as exc:
            OPTIONS_REFUSED.labels(exc.condition).inc()
            ORDERS.labels(side_name, "option_refused").inc()
            log.warning("%s: the endorser's option was not signed: %s", what, exc)
            return Outcome.OPTION_REFUSED
        except grpc.RpcError as exc:
            if again and _status(exc) in REQUEST_SPENT:
                assert retry is not None
                retry.request = None  # it cannot be answered again: a new request, now
                return self._order(slot, now)
            outcome = self._refused(slot, what, side_name, exc, now)
            if outcome is Outcome.LATER:
                retry = self._retries[slot]
                retry.side_name = side_name
                if not again:  # its answer may have been lost: the same request next time
                    retry.request, retry.requested_at = signed, now
            return outcome
        if retry is not None:  # answered: what comes next is about its option
            retry.request = None
        option = market_pb2.TradeOption.FromString(answer.option.payload)
        placing = self._identity.new_transaction(
            "place_order", market_pb2.PlaceOrder(option=answer.option), timestamp=now)
        if self._journal is not None:  # before it leaves: a restart resumes it
            self._journal.record(Placement(slot, placing, option.expires_at, side_name))
        return self._place(slot, what, side_name, placing, option.expires_at, now)

    def _terms(self, slot: int, now: int) -> market_pb2.OrderTerms | None:
        """This meter's order for `slot` under its policy (None: nothing to offer)."""
        net = self.net_forecast(slot, now)
        side = market_pb2.ORDER_SIDE_SELL if net > 0 else market_pb2.ORDER_SIDE_BUY
        lot = self._market.lot_wh
        quantity = abs(net) * self._policy.share_percent // 100 // lot * lot
        if quantity == 0:
            ORDERS.labels("sell" if net > 0 else "buy", "nothing_to_offer").inc()
            return None
        price = self._policy.sell_price if side == market_pb2.ORDER_SIDE_SELL \
            else self._policy.buy_price
        return market_pb2.OrderTerms(meter=self._identity.name, side=side, slot_start=slot,
                                     price=price, quantity_wh=quantity)

    def _restore(self, horizon: int, now: float) -> None:
        """The PlaceOrders an earlier run signed for slots still open: resumed as if their
        acknowledgement was lost (sent again while valid, then the chain decides); and its
        trade requests not answered yet, as if their answer was lost."""
        assert self._journal is not None
        for placement in self._journal.open_placements(after=horizon):
            self._retries[placement.slot] = _Retry(
                0, 0.0, placement.placing, placement.option_expires_at, placement.side_name)
            log.info("resuming pre-sale order %s for slot %d from the journal",
                     envelope_tx_id(placement.placing), placement.slot)
        # A request whose option was not accepted: its answer may have been lost with the
        # earlier run; sent again as is while fresh (`_order`), so the endorser gives the
        # option it kept instead of holding energy for a second one.
        for pending in self._journal.open_requests(after=horizon):
            # A stale one would be made anew: the slot is then the next one's business.
            fresh = now - pending.requested_at <= REQUEST_REUSE_S
            if fresh and pending.slot not in self._retries:
                self._retries[pending.slot] = _Retry(0, 0.0, request=pending.request,
                                                     requested_at=pending.requested_at)
                log.info("resuming pre-sale request for slot %d from the journal",
                         pending.slot)
        self._restored = True

    def _has_order(self, slot: int) -> bool:
        """Does the ledger hold an order of this meter for `slot`?"""
        found = self._ledger.committer.ListOrders(committer_pb2.ListOrdersRequest(
            meter=self._identity.name, slot_start=slot, page_size=1), timeout=self._ledger.timeout)
        return bool(found.orders)

    def _place(self, slot: int, what: str, side_name: str,
               placing: envelope_pb2.SignedEnvelope, expires_at: int, now: int) -> Outcome:
        try:
            acknowledged = self._ledger.submit(placing)
        except (Refused, grpc.RpcError) as exc:
            code = _status(exc)
            # Refused for now, or its option is dead at the endorser (a maker filled or
            # cancelled, expired): either way an earlier attempt may have been acknowledged,
            # so the chain decides before a new request; never a second order.
            dead = code == grpc.StatusCode.FAILED_PRECONDITION
            if code not in FOR_NOW and not dead:
                return self._refused(slot, what, side_name, exc, now)
            outcome = self._later(slot, what, exc, now)
            self._pending(slot, placing, expires_at, side_name, resend=not dead)
            return outcome
        if not acknowledged:  # ALREADY_EXISTS: in a block already, valid or not
            code = self._ledger.transaction_code(envelope_tx_id(placing))
            if code is None:  # the committer has not applied that block yet: it decides
                self._pending(slot, placing, expires_at, side_name,
                              resend=False).not_before = now + CHAIN_POLL_S
                return Outcome.LATER
            if code != Code.TX_VALIDATION_CODE_VALID:
                log.warning("%s was committed invalid (code %s): ordering anew", what, code)
                self._retries.pop(slot, None)
                return self._order(slot, now)
        return _placed(side_name, what)

    def _pending(self, slot: int, placing: envelope_pb2.SignedEnvelope, expires_at: int,
                 side_name: str, resend: bool) -> _Retry:
        """The slot's retry now awaits `placing` (maybe acknowledged): never a second order
        until the chain says it cannot land."""
        retry = self._retries.setdefault(slot, _Retry(0, 0.0))
        retry.placing, retry.option_expires_at = placing, expires_at
        retry.side_name, retry.resend = side_name, resend
        return retry

    def _resume_placing(self, slot: int, retry: _Retry, now: int) -> Outcome:
        """The slot's PlaceOrder was not acknowledged: send it again while its option is
        valid. Then only the chain can say whether it got in: once the committer's last
        block is past the option's expiry (block times never go back, so no later block can
        place it), it is on the ledger or never will be; until then, wait."""
        assert retry.placing is not None
        what = f"pre-sale order {envelope_tx_id(retry.placing)} for slot {slot}"
        side_name = retry.side_name
        if retry.resend and now <= retry.option_expires_at:
            return self._place(slot, what, side_name, retry.placing, retry.option_expires_at,
                               now)
        if self._ledger.last_block_time() <= retry.option_expires_at:
            # The deciding block comes about when the option expires: look again soon.
            retry.not_before = max(now + CHAIN_POLL_S, retry.option_expires_at + 1)
            return Outcome.LATER
        found = self._ledger.transaction_code(envelope_tx_id(retry.placing))
        if found == Code.TX_VALIDATION_CODE_VALID:
            return _placed(side_name, f"{what} (acknowledged late)")
        retry.placing = None  # it can no longer be placed: a new request
        return self._order(slot, now)

    def _refused(self, slot: int, what: str, side_name: str, exc: Exception,
                 now: float) -> Outcome:
        if _status(exc) in FOR_NOW:
            return self._later(slot, what, exc, now)
        ORDERS.labels(side_name, "refused").inc()
        log.warning("%s refused: %s", what, exc)
        return Outcome.REFUSED

    def _later(self, slot: int, what: str, exc: Exception, now: float) -> Outcome:
        """Try the slot again after the server's hint plus jitter, longer while it repeats."""
        code = _status(exc)
        retry = self._retries.setdefault(slot, _Retry(0, now))
        retry.not_before = now + self._backoff.delay(retry.attempts, retry_after_ms(exc))
        retry.attempts += 1
        RETRIES.labels(code.name).inc()
        log.info("%s refused for now (%s): again in %.1f s", what, code.name,
                 retry.not_before - now)
        return Outcome.LATER

    def _gate_closed(self, slot: int, retry: _Retry) -> Outcome:
        side_name = retry.side_name or "unknown"
        if retry.placing is not None:  # an order awaiting proof may have got in
            tx_id = envelope_tx_id(retry.placing)
            if self._ledger.transaction_code(tx_id) == Code.TX_VALIDATION_CODE_VALID:
                return _placed(side_name, f"pre-sale order {tx_id} for slot {slot} (found at "
                                          "gate closure)")
        ORDERS.labels(side_name, "gate_closed").inc()
        log.warning("pre-sale for slot %d: refused for now until its market closed (%d "
                    "attempts)", slot, retry.attempts)
        return Outcome.GATE_CLOSED

    def run(self, stop: threading.Event,
            on_health: Callable[[bool], None] = lambda healthy: None) -> None:
        """Trade until stopped. A step that fails unexpectedly (a bug, the journal's disk)
        is logged; UNHEALTHY_AFTER of them in a row are reported unhealthy (the node goes
        NOT_SERVING, not silent: one passing failure must not get the agent restarted)
        until a step completes again; the thread goes on either way."""
        wait = self._policy.every_seconds
        steps = FailingPasses(on_health)
        while not stop.wait(wait):
            try:
                self.step()
            except grpc.RpcError as exc:  # the committer is away (forecast): next round
                log.info("pre-sale step skipped: %s", exc.code())  # type: ignore[attr-defined]
            except Exception:
                log.exception("pre-sale step failed (%d in a row; NOT_SERVING from %d)",
                              steps.failed(), UNHEALTHY_AFTER)
            else:
                steps.passed()
            due = self.next_retry()
            wait = self._policy.every_seconds if due is None else \
                max(0.05, min(self._policy.every_seconds, due - time.time()))


def _placed(side_name: str, what: str) -> Outcome:
    ORDERS.labels(side_name, "placed").inc()
    log.info("placed a %s", what)
    return Outcome.PLACED


def _status(exc: Exception) -> grpc.StatusCode:
    return exc.status if isinstance(exc, Refused) else exc.code()  # type: ignore[attr-defined]
