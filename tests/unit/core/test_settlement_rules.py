"""settle_slot (issue 14): only the initiating organisation's settlement account, only after
the slot's readings deadline, once per slot; trades paid from escrow at trade prices,
imbalances against the readings charged and credited at the genesis prices, a statement per
meter; a replay (`gridctl ledger verify`) reproduces it. Refusals change nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from market_helpers import BUY, SELL
from settlement_helpers import (
    CONFLICT,
    DEADLINE,
    GATE,
    INVALID,
    NOT_AUTHORIZED,
    SLOT,
    VALID,
    Net,
    new_net,
    tx_id,
)

from gridledger.common.v1 import settlement_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.ledger import schema
from gridledger_core.ledger.errors import code_name

ASK = 250_000
ALLOCATION = 10**12


def traded(net: Net) -> dict[str, str]:
    """meter-1 sells 2,500 Wh at ASK to meter-2 (2,000) and meter-3 (500); the slot closes;
    readings: meter-1 delivers 2,000, meter-2 consumes 2,400, meter-3 consumes 300."""
    sell = net.order("meter-1", SELL, ASK, 3000)
    assert net.commit(sell) == [(VALID, "")]
    buy2, = [net.order("meter-2", BUY, 300_000, 2000)]
    assert net.commit(buy2) == [(VALID, "")]
    buy3 = net.order("meter-3", BUY, ASK, 500)
    assert net.commit(buy3) == [(VALID, "")]
    assert net.commit(at=GATE) == []
    readings = (net.readings("meter-1", 2000, 0) + net.readings("meter-2", 0, 2400)
                + net.readings("meter-3", 0, 300))
    assert {c for c, _ in net.commit(*readings, at=SLOT + 3600)} == {VALID}
    return {"sell": tx_id(sell), "buy2": tx_id(buy2), "buy3": tx_id(buy3)}


@pytest.fixture()
def net(genesis: Genesis, consortium_dir: Path) -> Net:
    return new_net(genesis, consortium_dir, replicas=2, signed=True)


def test_settlement_pays_trades_and_prices_imbalances(net: Net) -> None:
    orders = traded(net)
    assert net.commit(net.settle(), at=DEADLINE + 1) == [(VALID, "")]
    m1, m2, m3 = (net.statement(m) for m in ("meter-1", "meter-2", "meter-3"))
    # meter-1: sold 2,500 Wh for 625,000 µ, delivered 2,000: shortfall 500 Wh at 1 µ/Wh.
    assert (m1.sold_wh, m1.sold_value_micro, m1.produced_wh, m1.delivered_sold_wh,
            m1.shortfall_wh, m1.shortfall_charge_micro, m1.net_micro) == (
        2500, 625_000, 2000, 2000, 500, 500_000, 125_000)
    # meter-2: bought 2,000 Wh for 500,000 µ, consumed 2,400: shortfall 400 Wh.
    assert (m2.bought_wh, m2.bought_value_micro, m2.consumed_wh, m2.shortfall_wh,
            m2.shortfall_charge_micro, m2.net_micro, m2.readings) == (
        2000, 500_000, 2400, 400, 400_000, -900_000, 4)
    # meter-3: bought 500 Wh, consumed 300: surplus 200 Wh credited at 20,000 µ/kWh.
    assert (m3.surplus_wh, m3.surplus_credit_micro, m3.net_micro, m3.unpaid_micro) == (
        200, 4_000, -125_000 + 4_000, 0)
    balances = {m: net.account(m) for m in ("meter-1", "meter-2", "meter-3", net.settler)}
    assert {m: (a.balance_micro, a.reserved_micro) for m, a in balances.items()} == {
        "meter-1": (ALLOCATION + 125_000, 0), "meter-2": (ALLOCATION - 900_000, 0),
        "meter-3": (ALLOCATION - 121_000, 0), net.settler: (ALLOCATION + 896_000, 0)}
    for order_id in orders.values():
        assert net.record(order_id).reserved_micro == 0
    record = net.settlement()
    assert record is not None
    assert (record.meters, record.trades, record.traded_wh, record.delivered_wh,
            record.shortfall_wh, record.surplus_wh, record.traded_value_micro,
            record.imbalance_charges_micro, record.imbalance_credits_micro,
            record.settled_by) == (3, 2, 2500, 2000, 900, 200, 625_000, 900_000, 4_000,
                                   net.settler)
    assert net.ledger.get_state(schema.statement_meter_key("meter-2", SLOT)) == b""
    net.check_replay()


def test_settlement_is_once_per_slot(net: Net) -> None:
    traded(net)
    assert net.commit(net.settle(), at=DEADLINE + 1) == [(VALID, "")]
    before = net.dump()
    [(code, message)] = net.commit(net.settle(), at=DEADLINE + 2)
    assert code == CONFLICT and message.startswith("already_settled: "), message
    assert net.dump() == before
    # Two in one block: the first settles, the second is refused.
    [(a, _), (b, message)] = net.commit(net.settle(SLOT + 3600), net.settle(SLOT + 3600),
                                        at=DEADLINE + 3600 + 1)
    assert (a, b) == (VALID, CONFLICT) and "already_settled" in message
    net.check_replay()


@pytest.mark.parametrize("at", [GATE, SLOT + 3600, DEADLINE])
def test_early_settlement_is_refused_and_changes_nothing(net: Net, at: int) -> None:
    traded(net)
    net.commit(at=max(at, net.time))
    before = net.dump()
    [(code, message)] = net.commit(net.settle(), at=max(at, net.time))
    assert code == CONFLICT and message.startswith("readings_deadline: "), message
    assert net.dump() == before


@pytest.mark.parametrize("signer", ["meter-1", "admin", "treasury", "utility-admin",
                                   "endorser-1"])
def test_forged_settlement_is_not_authorized(net: Net, signer: str) -> None:
    traded(net)
    name = net.treasury if signer == "treasury" else signer
    before = net.dump()
    [(code, message)] = net.commit(net.settle(signer=name), at=DEADLINE + 1)
    assert (code_name(code), message.startswith("forged settlement: ")) == (
        code_name(NOT_AUTHORIZED), True), message
    assert net.dump() == before


def test_unaligned_slot_is_invalid_and_a_slot_without_trades_settles_empty(net: Net) -> None:
    [(code, message)] = net.commit(net.settle(SLOT + 1), at=DEADLINE + 1)
    assert code == INVALID and "slot_not_aligned" in message
    assert net.commit(net.settle(SLOT), at=DEADLINE + 1) == [(VALID, "")]
    record = net.settlement()
    assert record is not None and (record.meters, record.trades) == (0, 0)


def test_shortfall_a_meter_cannot_pay_is_recorded_as_unpaid(net: Net) -> None:
    traded(net)
    # meter-2 sends away all it has after its trade: its 400,000 µ charge cannot be paid.
    left = net.account("meter-2").balance_micro
    assert net.commit(net.transfer("meter-2", "meter-1", left)) == [(VALID, "")]
    assert net.commit(net.settle(), at=DEADLINE + 1) == [(VALID, "")]
    statement = net.statement("meter-2")
    assert (statement.shortfall_charge_micro, statement.unpaid_micro) == (400_000, 400_000)
    assert net.account("meter-2") .balance_micro == 0
    record = net.settlement()
    assert record is not None and record.unpaid_micro == 400_000


def test_settle_refused_stays_refused_for_replicas_and_replay(net: Net) -> None:
    traded(net)
    settle = net.settle()
    [(code, _)] = net.commit(settle, at=DEADLINE)
    assert code == CONFLICT
    assert net.settlement() is None
    assert net.commit(net.settle(), at=DEADLINE + 1) == [(VALID, "")]
    net.check_replay()


def test_statement_money_adds_up_per_meter(net: Net) -> None:
    traded(net)
    before = {m: net.account(m) for m in ("meter-1", "meter-2", "meter-3")}
    assert net.commit(net.settle(), at=DEADLINE + 1) == [(VALID, "")]
    for meter, old in before.items():
        new = net.account(meter)
        total = (new.balance_micro + new.reserved_micro) - (old.balance_micro
                                                            + old.reserved_micro)
        assert total == net.statement(meter).net_micro, meter
    # And the statement is what GetState returns to a client.
    raw = net.ledger.get_state(schema.statement_key(SLOT, "meter-1"))
    assert raw is not None and settlement_pb2.MeterStatement.FromString(raw).meter == "meter-1"


REPLAY = """
import sys
from pathlib import Path
from gridledger.common.v1 import block_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.block_proof import block_verifier
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.storage import MemoryStore
genesis = Genesis.load(Path(sys.argv[1]))
ledger = Ledger(MemoryStore(), genesis, block_verifier(genesis))
data = Path(sys.argv[2]).read_bytes()
while data:
    size = int.from_bytes(data[:4], "big")
    ledger.commit(block_pb2.Block.FromString(data[4:4 + size]))
    data = data[4 + size:]
print(ledger.chain.state_root.hex())
"""


@pytest.mark.parametrize("seed", ["1", "4242"])
def test_another_process_with_another_hash_seed_reaches_the_same_state(
        net: Net, consortium_dir: Path, tmp_path: Path, seed: str) -> None:
    """Replicas are separate processes: set and dict orders that depend on the string hash
    seed must not leak into expiry or settlement."""
    traded(net)
    assert net.commit(net.settle(), at=DEADLINE + 1) == [(VALID, "")]
    blocks = tmp_path / "blocks"
    blocks.write_bytes(b"".join(len(raw).to_bytes(4, "big") + raw
                                for raw in (b.SerializeToString() for b in net.blocks)))
    out = subprocess.run([sys.executable, "-c", REPLAY, str(consortium_dir / "genesis.json"),
                          str(blocks)], env={**os.environ, "PYTHONHASHSEED": seed},
                         capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == net.ledger.chain.state_root.hex()
