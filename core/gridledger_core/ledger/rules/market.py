"""Rules of the pre-sale market (seed 000, claims 1-4): placing an order by accepting an
endorser-signed option, and cancelling an order.

The *preset conditions* of a trade request (claim 2) are ``check_terms``: the endorser runs
it before it proposes anything (``EndorserService.RequestOptions``), and the rule below runs
it again at commit, against the block time and the state at that point of the block, so an
option that was fine when proposed can still be refused (slot closed, allowance used up).
Each failure names its condition (``Condition``) at the start of the message.

``process_place_order`` re-checks everything an option claims (claim 1): it is signed by a
consortium endorser; the taker is the transaction's creator (its envelope signature is the
acceptance); the option is not expired nor used before; every resting order it trades with
is on the ledger, open for at least the traded quantity, on the other side of the same slot
and someone else's; each trade is at the resting order's price and within the taker's limit;
the quantities add up; what rests does not cross the book. A forged or replayed option is
therefore invalid even when an endorser signed it. Only then does it write: the fills on
both orders, one trade record per trade, the remainder resting as the new order.

Escrow (issue 14). ``OrderRecord.reserved_micro`` is all the money an order holds:

- a buy: ceil(limit * remaining / 1000) for its open quantity, plus the value of each of its
  trades until the slot is settled. At a fill, the open part shrinks and everything above the
  trade's value (limit above the trade price) goes back to the balance at once;
- a sell: ceil(collateral * (remaining + filled) / 1000) (genesis
  ``settlement.sell_collateral_micro_per_kwh``); the filled part stays until settlement.

Cancel and gate-closure expiry release the open part; ``settle_slot`` pays the trades from it
and releases the rest. A buy or sell whose escrow exceeds the meter's balance fails the preset
condition ``insufficient_funds`` (the endorser's RequestOptions and the rule at commit).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from gridledger.common.v1 import envelope_pb2, market_pb2
from gridledger_core.genesis import Genesis, MarketParams
from gridledger_core.identity import Identity, Role, Signers
from gridledger_core.ledger import schema
from gridledger_core.ledger.checks import open_signed
from gridledger_core.ledger.errors import Code, TxInvalid
from gridledger_core.ledger.rules import money
from gridledger_core.ledger.rules.bounds import require_uint64
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.ledger.transitions_base import TxContext, require
from gridledger_core.market import forecast_memo
from gridledger_core.market import ledger_view as view
from gridledger_core.market.forecast import ForecastParams

INVALID = Code.TX_VALIDATION_CODE_INVALID_BODY
CONFLICT = Code.TX_VALIDATION_CODE_STATE_CONFLICT
NOT_AUTHORIZED = Code.TX_VALIDATION_CODE_NOT_AUTHORIZED
ENDORSEMENT = Code.TX_VALIDATION_CODE_ENDORSEMENT_FAILURE


class Condition(enum.StrEnum):
    """The preset conditions of claim 2, by the name their rejection starts with."""

    SIGNER_NOT_METER = "signer_not_meter"
    NOT_OWN_ACCOUNT = "not_own_account"
    SIDE_UNSPECIFIED = "side_unspecified"
    SLOT_NOT_ALIGNED = "slot_not_aligned"
    SLOT_NOT_OPEN = "slot_not_open"
    PRICE_OUT_OF_BAND = "price_out_of_band"
    PRICE_OFF_TICK = "price_off_tick"
    QUANTITY_NOT_POSITIVE = "quantity_not_positive"
    QUANTITY_NOT_LOT_MULTIPLE = "quantity_not_lot_multiple"
    QUANTITY_ABOVE_FORECAST = "quantity_above_forecast"
    INSUFFICIENT_FUNDS = money.INSUFFICIENT_FUNDS


class ConditionFailed(TxInvalid):
    """A preset condition failed; ``condition`` is its name (also the message's prefix)."""

    def __init__(self, condition: Condition, code: int, message: str) -> None:
        super().__init__(code, f"{condition.value}: {message}")
        self.condition = condition


def _condition(ok: bool, condition: Condition, code: int, message: str) -> None:
    if not ok:
        raise ConditionFailed(condition, code, message)


@dataclass(frozen=True)
class Allowance:
    """The quantity check's numbers, for the endorser's answer and for messages."""

    forecast_net_wh: int  # > 0 surplus, < 0 deficit
    allowance_wh: int  # forecast on this side + tolerance
    committed_wh: int  # already open or traded on this side of this slot

    @property
    def left_wh(self) -> int:
        return max(0, self.allowance_wh - self.committed_wh)


def forecast_params(market: MarketParams) -> ForecastParams:
    # Weighting is the forecaster's default (LINEAR); the genesis fixes only the window.
    return ForecastParams(window_days=market.forecast_window_days)


def market_open(market: MarketParams, slot_start: int, now: int) -> bool:
    """The slot's market is open from ``open_before`` until ``gate_closure`` before delivery."""
    return slot_start - market.open_before_seconds <= now < market.gate_closure(slot_start)


def check_terms(state: view.StateReader, genesis: Genesis, signer: Identity,
                terms: market_pb2.OrderTerms, now: int) -> Allowance:
    """The preset conditions of a trade request (claim 2), in a fixed order; the first that
    fails raises ``ConditionFailed``. ``now`` is the block time (the endorser: its clock)."""
    market = genesis.market
    _condition(signer.role == Role.METER, Condition.SIGNER_NOT_METER, NOT_AUTHORIZED,
               f"{signer.name} is a {signer.role}; only meters place pre-sale orders")
    _condition(terms.meter == signer.name, Condition.NOT_OWN_ACCOUNT, NOT_AUTHORIZED,
               f"{signer.name} may not place an order for {terms.meter!r}")
    _condition(terms.side in (view.BUY_PB, view.SELL_PB), Condition.SIDE_UNSPECIFIED, INVALID,
               "side must be buy or sell")
    slot = terms.slot_start
    _condition(slot >= 0 and slot % market.slot_seconds == 0, Condition.SLOT_NOT_ALIGNED,
               INVALID, f"slot start {slot} is not a multiple of the {market.slot_seconds} s slot")
    _condition(market_open(market, slot, now), Condition.SLOT_NOT_OPEN, CONFLICT,
               f"the market of slot {slot} is open from {slot - market.open_before_seconds} "
               f"until {market.gate_closure(slot)} (gate closure); it is {now}")
    low, high = max(market.price_min, 1), market.price_max
    _condition(low <= terms.price <= high, Condition.PRICE_OUT_OF_BAND, INVALID,
               f"price {terms.price} µ/kWh is outside the band [{low}, {high}]")
    _condition(terms.price % market.price_tick == 0, Condition.PRICE_OFF_TICK, INVALID,
               f"price {terms.price} µ/kWh is not a multiple of the tick {market.price_tick}")
    _condition(terms.quantity_wh > 0, Condition.QUANTITY_NOT_POSITIVE, INVALID,
               "quantity must be positive")
    _condition(terms.quantity_wh % market.lot_wh == 0, Condition.QUANTITY_NOT_LOT_MULTIPLE,
               INVALID, f"quantity {terms.quantity_wh} Wh is not a multiple of the lot "
                        f"{market.lot_wh} Wh")
    allowance = quantity_allowance(state, genesis, terms, now)
    _condition(terms.quantity_wh <= allowance.left_wh, Condition.QUANTITY_ABOVE_FORECAST,
               CONFLICT, _above_forecast(terms, allowance, market))
    need = escrow_rate(genesis, terms.side, terms.price)
    need = money.ceil_micro(need, terms.quantity_wh)
    available = money.get_account(state, genesis, terms.meter).balance_micro
    _condition(available >= need, Condition.INSUFFICIENT_FUNDS, CONFLICT,
               f"{view.side_name(terms.side)} of {terms.quantity_wh} Wh at {terms.price} µ/kWh "
               f"needs {need} µ in escrow; {terms.meter} has {available} µ available")
    return allowance


# -- escrow -----------------------------------------------------------------------------------

def escrow_rate(genesis: Genesis, side: int, price: int) -> int:
    """µ per kWh an order holds: a buy its limit price, a sell the genesis collateral."""
    return price if side == view.BUY_PB else genesis.settlement.sell_collateral_micro_per_kwh


def filled_wh(record: market_pb2.OrderRecord) -> int:
    return (record.quantity_wh - record.remaining_wh - record.cancelled_wh
            - record.expired_wh)


def open_escrow(genesis: Genesis, record: market_pb2.OrderRecord) -> int:
    """The part of ``reserved_micro`` that holds the order's open quantity."""
    rate = escrow_rate(genesis, record.side, record.price)
    if record.side == view.BUY_PB:
        return money.ceil_micro(rate, record.remaining_wh)
    filled = filled_wh(record)
    return money.ceil_micro(rate, filled + record.remaining_wh) - money.ceil_micro(rate, filled)


def _hold_escrow(state: StateOverlay, ctx: TxContext, record: market_pb2.OrderRecord) -> None:
    """A new order (remaining = its not-cancelled quantity, no fills yet) reserves its escrow."""
    amount = open_escrow(ctx.genesis, record)
    money.reserve(state, ctx, record.owner, amount, record.order_id)
    record.reserved_micro = amount


def _fill_escrow(state: StateOverlay, ctx: money.MoneyContext, record: market_pb2.OrderRecord,
                 trade: market_pb2.TradeRecord) -> None:
    """After ``record.remaining_wh`` lost the trade's quantity: a buy keeps the trade's value
    reserved and releases the rest of what that quantity held (a sell's collateral stays)."""
    if record.side != view.BUY_PB:
        return
    before = money.ceil_micro(record.price, record.remaining_wh + trade.quantity_wh)
    freed = before - money.ceil_micro(record.price, record.remaining_wh) - trade.value_micro
    money.release(state, ctx, record.owner, freed, record.order_id)
    record.reserved_micro -= freed


def release_open_escrow(state: StateOverlay, ctx: money.MoneyContext,
                        record: market_pb2.OrderRecord) -> int:
    """Before an order's open quantity ends (cancel, expiry): give back what it held."""
    amount = min(open_escrow(ctx.genesis, record), record.reserved_micro)
    money.release(state, ctx, record.owner, amount, record.order_id)
    record.reserved_micro -= amount
    return amount


def quantity_allowance(state: view.StateReader, genesis: Genesis, terms: market_pb2.OrderTerms,
                       now: int) -> Allowance:
    """Forecast of the slot from the meter's readings on the ledger, ``as_of`` = ``now`` so
    every committer gets the same number; + tolerance; less what is already committed."""
    market = genesis.market
    params = forecast_params(market)
    # Memoised per process (exact: keyed on the readings' bytes, see forecast_memo).
    net = forecast_memo.forecast_of(state, terms.meter, terms.slot_start, market.slot_seconds,
                                    genesis.reading_interval_seconds, params, as_of=now).net_wh
    available = max(0, net) if terms.side == view.SELL_PB else max(0, -net)
    allowance = available + available * market.forecast_tolerance_percent // 100
    committed = view.committed_wh(state, terms.meter, terms.slot_start, terms.side)
    return Allowance(net, allowance, committed)


def _above_forecast(terms: market_pb2.OrderTerms, allowance: Allowance,
                    market: MarketParams) -> str:
    what = "surplus" if terms.side == view.SELL_PB else "deficit"
    return (f"{view.side_name(terms.side)} of {terms.quantity_wh} Wh exceeds the {what} "
            f"allowance: forecast net {allowance.forecast_net_wh} Wh for slot "
            f"{terms.slot_start}, allowance {allowance.allowance_wh} Wh (incl. "
            f"{market.forecast_tolerance_percent} % tolerance), already open or traded "
            f"{allowance.committed_wh} Wh, left {allowance.left_wh} Wh")


# -- signed payloads --------------------------------------------------------------------------

def verify_option(envelope: envelope_pb2.SignedEnvelope,
                  signers: Signers) -> tuple[Identity, market_pb2.TradeOption]:
    """An option signed by a consortium endorser (an endorser account of the organisation
    whose CA issued its certificate), decoded from the exact signed bytes."""
    endorser = open_signed(envelope, signers, "option", Code.TX_VALIDATION_CODE_UNKNOWN_SIGNER,
                           ENDORSEMENT)
    require(endorser.role == Role.ENDORSER, ENDORSEMENT,
            f"option signed by {endorser.name}, a {endorser.role}, not an endorser")
    try:
        option = market_pb2.TradeOption.FromString(envelope.payload)
    except DecodeError as exc:
        raise TxInvalid(Code.TX_VALIDATION_CODE_MALFORMED,
                        "option payload is not a gridledger.common.v1.TradeOption") from exc
    require(option.endorser == endorser.name, ENDORSEMENT,
            f"option names endorser {option.endorser!r} but is signed by {endorser.name}")
    return endorser, option


# -- rules ------------------------------------------------------------------------------------

def process_place_order(state: StateOverlay, ctx: TxContext, body: market_pb2.PlaceOrder) -> None:
    creator = ctx.checked.creator
    _, option = verify_option(body.option, ctx.signers)
    terms = option.terms
    check_terms(state, ctx.genesis, creator, terms, ctx.block_time)
    require(bool(option.option_id), INVALID, "option has no id")
    require(ctx.block_time <= option.expires_at, CONFLICT,
            f"option {option.option_id} expired at {option.expires_at} (block time "
            f"{ctx.block_time}); request new options")
    # Keyed by its endorser too: an id seen in flight (by a relaying endorser, or an orderer
    # holding the PlaceOrder) and signed into another endorser's option must not spend it.
    used_by = state.get(schema.option_key(option.endorser, option.option_id))
    require(used_by is None, CONFLICT,
            f"option {option.option_id} was already used by transaction "
            f"{(used_by or b'').decode()}")
    traded = sum(t.quantity_wh for t in option.trades)
    require(traded + option.rest_wh + option.cancelled_wh == terms.quantity_wh, INVALID,
            f"option trades {traded} + rests {option.rest_wh} + cancels {option.cancelled_wh} "
            f"Wh, not the ordered {terms.quantity_wh} Wh")

    order_id = ctx.checked.tx_id
    taker = market_pb2.OrderRecord(
        order_id=order_id, owner=creator.name, side=terms.side, slot_start=terms.slot_start,
        price=terms.price, quantity_wh=terms.quantity_wh, sequence=view.next_sequence(state),
        option_id=option.option_id, placed_at=ctx.block_time,
        remaining_wh=terms.quantity_wh - option.cancelled_wh, cancelled_wh=option.cancelled_wh)
    _hold_escrow(state, ctx, taker)
    for index, proposed in enumerate(option.trades):
        maker = _check_trade(state, ctx.genesis.market, creator.name, terms, proposed)
        trade = _trade_record(state, ctx, option, taker, maker, proposed, index)
        _fill(state, ctx, maker, trade)
        taker.fills.append(trade)
        taker.remaining_wh -= trade.quantity_wh
        _fill_escrow(state, ctx, taker, trade)
        for party in (trade.buyer, trade.seller):
            state.put(schema.trade_meter_key(party, trade.slot_start, trade.sequence),
                      f"{trade.slot_start:012d}/{trade.sequence:012d}".encode())
        state.put(schema.trade_key(trade.slot_start, trade.sequence),
                  trade.SerializeToString(deterministic=True))
    _check_remainder(state, creator.name, terms, option)
    assert taker.remaining_wh == option.rest_wh  # the quantities were checked to add up
    view.save_order(state, taker)
    if taker.remaining_wh:
        state.put(view.book_key(taker), order_id.encode())
    state.put(schema.order_meter_key(creator.name, terms.slot_start, taker.sequence),
              order_id.encode())
    added = terms.quantity_wh - option.cancelled_wh
    require_uint64(view.committed_wh(state, creator.name, terms.slot_start, terms.side) + added,
                   CONFLICT, f"{creator.name}'s committed energy in slot {terms.slot_start}")
    view.add_committed_wh(state, creator.name, terms.slot_start, terms.side, added)
    state.put(schema.option_key(option.endorser, option.option_id), order_id.encode())


def _check_trade(state: StateOverlay, market: MarketParams, taker: str,
                 terms: market_pb2.OrderTerms,
                 proposed: market_pb2.ProposedTrade) -> market_pb2.OrderRecord:
    """One proposed trade against the ledger's record of its resting order (read after the
    option's earlier trades were applied, so two trades cannot over-fill one order)."""
    maker_id = proposed.maker_order_id
    require(proposed.quantity_wh > 0 and proposed.quantity_wh % market.lot_wh == 0, INVALID,
            f"trade with {maker_id}: quantity {proposed.quantity_wh} Wh is not a positive "
            f"multiple of the lot {market.lot_wh}")
    maker = view.load_order(state, maker_id)
    require(maker is not None, CONFLICT, f"resting order {maker_id} is not on the ledger")
    assert maker is not None
    require(maker.slot_start == terms.slot_start and maker.side == view.opposite_pb(terms.side),
            INVALID, f"order {maker_id} is not on the other side of slot {terms.slot_start}")
    require(maker.owner == proposed.maker, INVALID,
            f"order {maker_id} belongs to {maker.owner}, not {proposed.maker!r}")
    require(maker.owner != taker, INVALID, f"self-trade: order {maker_id} is {taker}'s own")
    require(proposed.price == maker.price, INVALID,
            f"trade price {proposed.price} is not the resting order's price {maker.price}")
    crosses = (maker.price <= terms.price if terms.side == view.BUY_PB
               else maker.price >= terms.price)
    require(crosses, INVALID, f"trade price {maker.price} is beyond the limit {terms.price}")
    require(maker.remaining_wh >= proposed.quantity_wh, CONFLICT,
            f"over-fill: order {maker_id} has {maker.remaining_wh} Wh open, the trade takes "
            f"{proposed.quantity_wh} Wh; request new options")
    return maker


def _trade_record(state: StateOverlay, ctx: TxContext, option: market_pb2.TradeOption,
                  taker: market_pb2.OrderRecord, maker: market_pb2.OrderRecord,
                  proposed: market_pb2.ProposedTrade, index: int) -> market_pb2.TradeRecord:
    buy, sell = (taker, maker) if taker.side == view.BUY_PB else (maker, taker)
    return market_pb2.TradeRecord(
        trade_id=f"{taker.order_id}:{index}", slot_start=taker.slot_start,
        buy_order_id=buy.order_id, sell_order_id=sell.order_id, buyer=buy.owner,
        seller=sell.owner, price=maker.price, quantity_wh=proposed.quantity_wh,
        taker_side=taker.side, maker_order_id=maker.order_id, executed_at=ctx.block_time,
        option_id=option.option_id, sequence=view.next_sequence(state),
        value_micro=trade_value(maker.price, proposed.quantity_wh))


def trade_value(price: int, quantity_wh: int) -> int:
    """What the buyer pays the seller: computed once per trade, the same for both sides."""
    return price * quantity_wh // 1000


def _fill(state: StateOverlay, ctx: TxContext, maker: market_pb2.OrderRecord,
          trade: market_pb2.TradeRecord) -> None:
    maker.fills.append(trade)
    maker.remaining_wh -= trade.quantity_wh
    _fill_escrow(state, ctx, maker, trade)
    if not maker.remaining_wh:
        state.delete(view.book_key(maker))
    view.save_order(state, maker)


def _check_remainder(state: StateOverlay, taker: str, terms: market_pb2.OrderTerms,
                     option: market_pb2.TradeOption) -> None:
    """What rests must not cross the book (the book on the ledger is never crossed, and an
    option that skipped a better resting order is stale); a self-trade-prevention cancel is
    only valid when the next order to match really is the taker's own."""
    best = view.best_opposite(state, terms.slot_start, terms.side)
    crossing = best is not None and (best[0] <= terms.price if terms.side == view.BUY_PB
                                     else best[0] >= terms.price)
    if option.rest_wh:
        require(not crossing, CONFLICT,
                f"the remainder of {option.rest_wh} Wh would cross resting order "
                f"{best[1] if best else ''} at {best[0] if best else 0}; request new options")
    if option.cancelled_wh:
        owner = None
        if crossing and best is not None:
            record = view.load_order(state, best[1])
            owner = record.owner if record is not None else None
        require(owner == taker, INVALID,
                "option cancels a remainder but the next order to match is not the taker's own")


def process_cancel_order(state: StateOverlay, ctx: TxContext,
                         body: market_pb2.CancelOrder) -> None:
    creator = ctx.checked.creator
    require(creator.role == Role.METER, NOT_AUTHORIZED,
            f"{creator.name} is a {creator.role}; only meters cancel orders")
    record = view.load_order(state, body.order_id)
    require(record is not None, CONFLICT, f"order {body.order_id!r} is not on the ledger")
    assert record is not None
    require(record.owner == creator.name, NOT_AUTHORIZED,
            f"order {body.order_id} belongs to {record.owner}, not {creator.name}")
    closure = ctx.genesis.market.gate_closure(record.slot_start)
    require(ctx.block_time < closure, CONFLICT,
            f"the market of slot {record.slot_start} closed at {closure}; the order is final")
    require(record.remaining_wh > 0, CONFLICT,
            f"order {body.order_id} has nothing open to cancel")
    state.delete(view.book_key(record))
    view.add_committed_wh(state, record.owner, record.slot_start, record.side,
                          -record.remaining_wh)
    release_open_escrow(state, ctx, record)
    record.cancelled_wh += record.remaining_wh
    record.remaining_wh = 0
    view.save_order(state, record)


def expire_order(state: StateOverlay, ctx: money.MoneyContext,
                 record: market_pb2.OrderRecord) -> None:
    """Gate closure: the open quantity of an order of a closed slot expires (the ledger's block
    prologue, before the block's transactions, so every replica does it at the same point).
    Cannot fail on a consistent state: it only releases what the order itself holds."""
    if not record.remaining_wh:
        return
    state.delete(view.book_key(record))
    committed = view.committed_wh(state, record.owner, record.slot_start, record.side)
    view.add_committed_wh(state, record.owner, record.slot_start, record.side,
                          -min(committed, record.remaining_wh))
    release_open_escrow(state, ctx, record)
    record.expired_wh += record.remaining_wh
    record.remaining_wh = 0
    view.save_order(state, record)


RULES = {"place_order": process_place_order, "cancel_order": process_cancel_order}
