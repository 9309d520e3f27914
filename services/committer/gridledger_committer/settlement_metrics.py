"""Prometheus metrics of settlement and money on a committer (issue 14 item 9), computed from
what each committed block made valid: a SettleSlot's stored SlotSettlement record (the rule's
own figures, read back from state), and the amounts of FundAccount, Transfer and RedeemCoins
bodies.

Labels are bounded (an energy or money kind, never a slot, meter or account): counters add
up every settled slot; the `last_slot` gauges show the most recently settled slot alone.
Every committer commits every block, so each exports the same totals: dashboards take the
max over committers, not the sum. Counters start at zero when a committer starts (rate() and
increase() handle that); the gauges start from the highest settled slot in state.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge

from gridledger.common.v1 import settlement_pb2, transaction_pb2
from gridledger_core.ledger import schema
from gridledger_core.ledger.errors import Code
from gridledger_core.ledger.ledger import CommitResult, Ledger

log = logging.getLogger(__name__)

SLOTS = Counter("gridledger_settlement_slots", "Delivery slots settled (valid SettleSlot).")
ENERGY = Counter("gridledger_settlement_energy_wh",
                 "Energy of settled slots, Wh: traded, delivered (sold and covered by export), "
                 "shortfall and surplus (imbalance).", ["kind"])
MONEY = Counter("gridledger_money_moved_micro",
                "Money moved by committed transactions, micro-units: funding, transfer, "
                "redemption, and per settled slot trade (values paid), imbalance_charge, "
                "imbalance_credit; unpaid = charges that found no money (debt).", ["kind"])
LAST_SLOT = Gauge("gridledger_settlement_last_slot_start_seconds",
                  "Start (Unix seconds) of the most recently settled delivery slot.")
LAST_ENERGY = Gauge("gridledger_settlement_last_slot_energy_wh",
                    "Energy of the most recently settled slot, Wh, by kind (as "
                    "gridledger_settlement_energy_wh).", ["kind"])
LAST_METERS = Gauge("gridledger_settlement_last_slot_meters",
                    "Meters settled in the most recently settled slot.")

VALID = Code.TX_VALIDATION_CODE_VALID


def energy_of(record: settlement_pb2.SlotSettlement) -> dict[str, int]:
    return {"traded": record.traded_wh, "delivered": record.delivered_wh,
            "shortfall": record.shortfall_wh, "surplus": record.surplus_wh}


def money_of(record: settlement_pb2.SlotSettlement) -> dict[str, int]:
    return {"trade": record.traded_value_micro,
            "imbalance_charge": record.imbalance_charges_micro,
            "imbalance_credit": record.imbalance_credits_micro,
            "unpaid": record.unpaid_micro}


class SettlementMetrics:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        for kind in ("traded", "delivered", "shortfall", "surplus"):
            ENERGY.labels(kind)  # every series exists from the start (rate() sees the first)
        for kind in ("funding", "transfer", "redemption", "trade", "imbalance_charge",
                     "imbalance_credit", "unpaid"):
            MONEY.labels(kind)

    def restore(self) -> None:
        """The gauges from the highest settled slot in state (after a restart)."""
        prefix = schema.state_key(schema.settlement_key(0).rpartition("/")[0] + "/")
        for _, raw in self._ledger.store.scan(prefix, limit=1, reverse=True):
            self._show_last(settlement_pb2.SlotSettlement.FromString(raw))

    def on_commit(self, result: CommitResult) -> None:
        """Count a committed block's valid money transactions; never raises."""
        try:
            for tx, code in zip(result.transactions, result.codes, strict=False):
                if tx is not None and code == VALID:
                    self._count(tx)
        except Exception:  # metrics must not disturb the commit path
            log.exception("settlement metrics of block %d failed", result.number)

    def _count(self, tx: transaction_pb2.Transaction) -> None:
        body = tx.WhichOneof("body")
        if body == "fund_account":
            MONEY.labels("funding").inc(tx.fund_account.amount_micro)
        elif body == "transfer":
            MONEY.labels("transfer").inc(tx.transfer.amount_micro)
        elif body == "redeem_coins":
            value = self._ledger.genesis.settlement.coin_redeem_value_micro
            MONEY.labels("redemption").inc(tx.redeem_coins.coins * value)
        elif body == "settle_slot":
            raw = self._ledger.get_state(schema.settlement_key(tx.settle_slot.slot_start))
            if raw is None:  # a valid SettleSlot always stores its record; say if not
                log.warning("settle_slot %s committed without a record of slot %d",
                            tx.header.tx_id, tx.settle_slot.slot_start)
                return
            record = settlement_pb2.SlotSettlement.FromString(raw)
            SLOTS.inc()
            for kind, wh in energy_of(record).items():
                ENERGY.labels(kind).inc(wh)
            for kind, micro in money_of(record).items():
                MONEY.labels(kind).inc(micro)
            self._show_last(record)

    def _show_last(self, record: settlement_pb2.SlotSettlement) -> None:
        LAST_SLOT.set(record.slot_start)
        LAST_METERS.set(record.meters)
        for kind, wh in energy_of(record).items():
            LAST_ENERGY.labels(kind).set(wh)
