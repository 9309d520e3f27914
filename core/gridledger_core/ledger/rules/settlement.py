"""Ex-post settlement of a delivery slot (issue 14): ``process_settle_slot``.

Submitted by a settlement account of the initiating organisation once the slot's readings
deadline (slot end + genesis ``readings.submission_window_seconds``) has passed at block time;
once per slot. The transaction carries only the slot: the figures are computed from the ledger
(``market/settlement_calc.py``), so a settlement agent cannot choose them. A slot without
trades settles too, to an empty record (the agent walks slots without asking which traded).

Money moves in a fixed order, so every replica (and a replay) moves the same amounts:

1. every trade of the slot, in sequence order: its value from the buyer's reserved escrow to
   the seller's balance (ENTRY_KIND_TRADE);
2. every order with trades in the slot, by order id: what it still holds (a sell's collateral,
   a buy's rounding rest) goes back to the balance (ENTRY_KIND_RELEASE);
3. shortfall charges, by meter name, meter -> balancing account; then surplus credits,
   balancing account -> meter (ENTRY_KIND_IMBALANCE). ``money.charge`` takes what the payer
   has; the rest is recorded as unpaid in the statement (a meter's debt, or the balancing
   account's). Without a genesis balancing account, imbalances are recorded, not priced.

Work is bounded by the slot's trades (each at least one lot of energy some seller's forecast
allowed) and the slot's reading intervals per meter (point lookups).
"""

from __future__ import annotations

from gridledger.common.v1 import market_pb2, settlement_pb2, transaction_pb2
from gridledger_core.identity import Role
from gridledger_core.ledger import schema
from gridledger_core.ledger.errors import Code, EntryKind
from gridledger_core.ledger.rules import market as market_rules
from gridledger_core.ledger.rules import money
from gridledger_core.ledger.rules.bounds import require_uint64
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.ledger.transitions_base import TxContext, require
from gridledger_core.market import ledger_view as view
from gridledger_core.market.settlement_calc import Metered, Position, TradeFacts, positions

INVALID = Code.TX_VALIDATION_CODE_INVALID_BODY
CONFLICT = Code.TX_VALIDATION_CODE_STATE_CONFLICT
NOT_AUTHORIZED = Code.TX_VALIDATION_CODE_NOT_AUTHORIZED
Kind = EntryKind


def readings_deadline(ctx: TxContext, slot_start: int) -> int:
    """The last block time a reading of the slot's last interval may be committed."""
    return (slot_start + ctx.genesis.market.slot_seconds
            + ctx.genesis.reading_submission_window_seconds)


def metered(state: StateOverlay, ctx: TxContext, meter: str, slot_start: int) -> Metered:
    """Sums of the meter's readings of the intervals inside the slot (missing = 0)."""
    interval = ctx.genesis.reading_interval_seconds
    keys = [schema.reading_key(meter, t)
            for t in range(slot_start, slot_start + ctx.genesis.market.slot_seconds, interval)]
    produced = consumed = count = 0
    for raw in state.get_many(keys):
        if raw is not None:
            reading = transaction_pb2.MeterReading.FromString(raw)
            produced += reading.produced_wh
            consumed += reading.consumed_wh
            count += 1
    return Metered(produced, consumed, count)


def process_settle_slot(state: StateOverlay, ctx: TxContext,
                        body: settlement_pb2.SettleSlot) -> None:
    creator = ctx.checked.creator
    genesis = ctx.genesis
    require(creator.role == Role.SETTLEMENT and creator.org == genesis.initiating_organization,
            NOT_AUTHORIZED,
            f"forged settlement: {creator.name} is a {creator.role} of {creator.org}; only a "
            f"settlement account of {genesis.initiating_organization} settles slots")
    slot = body.slot_start
    slot_seconds = genesis.market.slot_seconds
    require(slot >= 0 and slot % slot_seconds == 0, INVALID,
            f"slot_not_aligned: slot start {slot} is not a multiple of the {slot_seconds} s slot")
    deadline = readings_deadline(ctx, slot)
    require(ctx.block_time > deadline, CONFLICT,
            f"readings_deadline: slot {slot} can be settled after its readings deadline "
            f"{deadline} (slot end + {genesis.reading_submission_window_seconds} s); block "
            f"time {ctx.block_time}")
    earlier = state.get(schema.settlement_key(slot))
    require(earlier is None, CONFLICT,
            f"already_settled: slot {slot} was settled by transaction "
            f"{settlement_pb2.SlotSettlement.FromString(earlier).tx_id if earlier else ''}")

    trades = [market_pb2.TradeRecord.FromString(v)
              for _, v in state.scan(schema.trade_prefix(slot))]
    orders = _orders(state, ctx, trades)
    figures = positions(
        [TradeFacts(t.buyer, t.seller, t.quantity_wh, t.value_micro) for t in trades],
        {m: metered(state, ctx, m, slot) for m in {t.buyer for t in trades}
         | {t.seller for t in trades}})
    for trade in trades:
        buy = orders[trade.buy_order_id]
        require(buy.reserved_micro >= trade.value_micro, CONFLICT,
                f"order {buy.order_id} holds {buy.reserved_micro} µ, less than trade "
                f"{trade.trade_id}'s value {trade.value_micro} µ")
        money.transfer(state, ctx, trade.buyer, trade.seller, trade.value_micro,
                       Kind.ENTRY_KIND_TRADE, trade.trade_id, from_reserved=True)
        buy.reserved_micro -= trade.value_micro
    released: dict[str, int] = {}
    for order_id in sorted(orders):
        record = orders[order_id]
        money.release(state, ctx, record.owner, record.reserved_micro, order_id)
        released[record.owner] = released.get(record.owner, 0) + record.reserved_micro
        record.reserved_micro = 0
        view.save_order(state, record)
    statements = {p.meter: _statement(p, slot, released.get(p.meter, 0)) for p in figures}
    _imbalances(state, ctx, slot, figures, statements)
    _record(state, ctx, slot, trades, statements)


def _orders(state: StateOverlay, ctx: TxContext,
            trades: list[market_pb2.TradeRecord]) -> dict[str, market_pb2.OrderRecord]:
    """The orders with trades in the slot. Any still open (possible only when an endorser
    simulates before the block whose prologue expires them) is expired first, as it will be."""
    orders: dict[str, market_pb2.OrderRecord] = {}
    for order_id in sorted({t.buy_order_id for t in trades} | {t.sell_order_id for t in trades}):
        record = view.load_order(state, order_id)
        require(record is not None, CONFLICT, f"order {order_id} of a trade is not on the ledger")
        assert record is not None
        market_rules.expire_order(state, ctx, record)
        orders[order_id] = record
    return orders


def _statement(p: Position, slot: int, released: int) -> settlement_pb2.MeterStatement:
    what = f"{p.meter}'s settlement of slot {slot}"
    for value in (p.bought_wh, p.sold_wh, p.bought_value_micro, p.sold_value_micro,
                  p.metered.produced_wh, p.metered.consumed_wh, p.shortfall_wh, p.surplus_wh):
        require_uint64(value, CONFLICT, what)
    return settlement_pb2.MeterStatement(
        meter=p.meter, slot_start=slot, bought_wh=p.bought_wh, sold_wh=p.sold_wh,
        bought_value_micro=p.bought_value_micro, sold_value_micro=p.sold_value_micro,
        produced_wh=p.metered.produced_wh, consumed_wh=p.metered.consumed_wh,
        readings=p.metered.readings, delivered_sold_wh=p.delivered_sold_wh,
        shortfall_wh=p.shortfall_wh, surplus_wh=p.surplus_wh, paid_micro=p.sold_value_micro,
        paid_for_purchases_micro=p.bought_value_micro, released_micro=released,
        net_micro=p.sold_value_micro - p.bought_value_micro)


def _imbalances(state: StateOverlay, ctx: TxContext, slot: int, figures: list[Position],
                statements: dict[str, settlement_pb2.MeterStatement]) -> None:
    """Shortfalls first (their charges may fund the credits), then surpluses; by meter."""
    params = ctx.genesis.settlement
    balancing = params.balancing_account
    reference = schema.settlement_key(slot)
    if not balancing:
        return
    for p in figures:
        statement = statements[p.meter]
        charge = require_uint64(p.shortfall_charge_micro(params.shortfall_price_micro_per_kwh),
                                CONFLICT, f"{p.meter}'s shortfall charge")
        statement.shortfall_charge_micro = charge
        if charge:
            paid = money.charge(state, ctx, p.meter, balancing, charge,
                                Kind.ENTRY_KIND_IMBALANCE, reference)
            statement.unpaid_micro = charge - paid
            statement.net_micro -= paid
    for p in figures:
        statement = statements[p.meter]
        credit = require_uint64(p.surplus_credit_micro(params.surplus_price_micro_per_kwh),
                                CONFLICT, f"{p.meter}'s surplus credit")
        statement.surplus_credit_micro = credit
        if credit:
            paid = money.charge(state, ctx, balancing, p.meter, credit,
                                Kind.ENTRY_KIND_IMBALANCE, reference)
            statement.unpaid_micro = credit - paid
            statement.net_micro += paid


def _record(state: StateOverlay, ctx: TxContext, slot: int,
            trades: list[market_pb2.TradeRecord],
            statements: dict[str, settlement_pb2.MeterStatement]) -> None:
    record = settlement_pb2.SlotSettlement(
        slot_start=slot, settled_by=ctx.checked.creator.name, tx_id=ctx.checked.tx_id,
        settled_at=ctx.block_time, height=ctx.height, meters=len(statements),
        trades=len(trades))
    totals = {"traded_wh": sum(t.quantity_wh for t in trades),
              "traded_value_micro": sum(t.value_micro for t in trades),
              "delivered_wh": sum(s.delivered_sold_wh for s in statements.values()),
              "shortfall_wh": sum(s.shortfall_wh for s in statements.values()),
              "surplus_wh": sum(s.surplus_wh for s in statements.values()),
              "imbalance_charges_micro": sum(s.shortfall_charge_micro - s.unpaid_micro
                                             for s in statements.values()
                                             if s.shortfall_charge_micro),
              "imbalance_credits_micro": sum(s.surplus_credit_micro - s.unpaid_micro
                                             for s in statements.values()
                                             if s.surplus_credit_micro),
              "unpaid_micro": sum(s.unpaid_micro for s in statements.values())}
    for name, value in totals.items():
        setattr(record, name, require_uint64(value, CONFLICT, f"slot {slot}'s {name}"))
    for meter, statement in sorted(statements.items()):
        state.put(schema.statement_key(slot, meter),
                  statement.SerializeToString(deterministic=True))
        state.put(schema.statement_meter_key(meter, slot), b"")
    state.put(schema.settlement_key(slot), record.SerializeToString(deterministic=True))


RULES = {"settle_slot": process_settle_slot}
