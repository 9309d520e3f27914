"""The committer's settlement metrics: a committed block's valid SettleSlot is counted from the
SlotSettlement record stored in state, funding/transfer/redemption from their bodies; an
invalid transaction counts nothing; the last-slot gauges come back from state on restart.
(The CommitResult is built here: the settle_slot rule is another helper's work, and this is
about what the committer reads from the stored record.)"""

from __future__ import annotations

import dataclasses

from money_helpers import SLOT, apply, money_ledger
from prometheus_client import REGISTRY

from gridledger.common.v1 import settlement_pb2, transaction_pb2
from gridledger_committer.settlement_metrics import SettlementMetrics
from gridledger_core.genesis import Genesis
from gridledger_core.ledger import schema
from gridledger_core.ledger.errors import Code
from gridledger_core.ledger.ledger import CommitResult
from gridledger_core.ledger.state import StateOverlay

VALID, INVALID = Code.TX_VALIDATION_CODE_VALID, Code.TX_VALIDATION_CODE_STATE_CONFLICT


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def tx(body: str, message: object) -> transaction_pb2.Transaction:
    out = transaction_pb2.Transaction()
    out.header.tx_id = f"tx-{body}"
    getattr(out, body).CopyFrom(message)
    return out


def block(*txs: tuple[transaction_pb2.Transaction | None, int]) -> CommitResult:
    return CommitResult(number=7, block_hash=b"", state_root=b"",
                        transactions=[t for t, _ in txs], codes=[c for _, c in txs])


def test_valid_money_transactions_are_counted_from_the_stored_records(
        genesis: Genesis) -> None:
    ledger = money_ledger(genesis)
    ledger.genesis = dataclasses.replace(ledger.genesis, settlement=dataclasses.replace(
        ledger.genesis.settlement, coin_redeem_value_micro=250_000))
    state = StateOverlay(ledger.store)
    record = settlement_pb2.SlotSettlement(
        slot_start=SLOT + 3600, meters=3, traded_wh=4000, delivered_wh=3500, shortfall_wh=500,
        surplus_wh=200, traded_value_micro=900_000, imbalance_charges_micro=500_000,
        imbalance_credits_micro=4_000, unpaid_micro=100)
    state.put(schema.settlement_key(SLOT + 3600), record.SerializeToString())
    apply(ledger, state)
    metrics = SettlementMetrics(ledger)
    names = ("gridledger_settlement_slots_total", "gridledger_settlement_energy_wh_total",
             "gridledger_money_moved_micro_total")
    before = {
        "slots": sample(names[0]),
        **{k: sample(names[1], kind=k) for k in ("traded", "delivered", "shortfall", "surplus")},
        **{k: sample(names[2], kind=k) for k in ("funding", "transfer", "redemption", "trade",
                                                  "imbalance_charge", "imbalance_credit",
                                                  "unpaid")}}
    settle = tx("settle_slot", settlement_pb2.SettleSlot(slot_start=SLOT + 3600))
    metrics.on_commit(block(
        (settle, VALID),
        (tx("fund_account", settlement_pb2.FundAccount(account="m", amount_micro=7)), VALID),
        (tx("transfer", settlement_pb2.Transfer(to="m", amount_micro=5)), VALID),
        (tx("transfer", settlement_pb2.Transfer(to="m", amount_micro=1000)), INVALID),
        (tx("redeem_coins", settlement_pb2.RedeemCoins(coins=2)), VALID),
        (None, Code.TX_VALIDATION_CODE_MALFORMED)))
    after = {
        "slots": sample(names[0]),
        **{k: sample(names[1], kind=k) for k in ("traded", "delivered", "shortfall", "surplus")},
        **{k: sample(names[2], kind=k) for k in ("funding", "transfer", "redemption", "trade",
                                                  "imbalance_charge", "imbalance_credit",
                                                  "unpaid")}}
    assert {k: after[k] - before[k] for k in after} == {
        "slots": 1, "traded": 4000, "delivered": 3500, "shortfall": 500, "surplus": 200,
        "funding": 7, "transfer": 5, "redemption": 500_000, "trade": 900_000,
        "imbalance_charge": 500_000, "imbalance_credit": 4_000, "unpaid": 100}
    assert sample("gridledger_settlement_last_slot_start_seconds") == SLOT + 3600
    assert sample("gridledger_settlement_last_slot_energy_wh", kind="shortfall") == 500
    assert sample("gridledger_settlement_last_slot_meters") == 3


def test_a_settle_slot_without_its_record_counts_nothing_and_never_raises(
        genesis: Genesis) -> None:
    metrics = SettlementMetrics(money_ledger(genesis))
    before = sample("gridledger_settlement_slots_total")
    metrics.on_commit(block((tx("settle_slot", settlement_pb2.SettleSlot(slot_start=1)), VALID)))
    metrics.on_commit(CommitResult(number=8, block_hash=b"", state_root=b"",
                                   transactions=[object()], codes=[VALID]))  # type: ignore[list-item]
    assert sample("gridledger_settlement_slots_total") == before


def test_last_slot_gauges_come_back_from_state(genesis: Genesis) -> None:
    ledger = money_ledger(genesis)
    state = StateOverlay(ledger.store)
    for slot, short in ((SLOT + 7200, 70), (SLOT + 3600, 36)):
        state.put(schema.settlement_key(slot), settlement_pb2.SlotSettlement(
            slot_start=slot, shortfall_wh=short).SerializeToString())
    apply(ledger, state)
    SettlementMetrics(ledger).restore()
    assert sample("gridledger_settlement_last_slot_start_seconds") == SLOT + 7200
    assert sample("gridledger_settlement_last_slot_energy_wh", kind="shortfall") == 70
