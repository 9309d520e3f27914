"""Money accounts and escrow (issue 14): funding only by the initiating organisation's
treasury, transfers from one's own balance, escrow on orders (buy: limit price, sell: genesis
collateral), released at fills above the trade value, at cancel and at gate-closure expiry.
Every refusal names its condition and changes nothing; the Net helper checks conservation and
exact escrow after every block."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from market_helpers import BUY, SELL, history
from settlement_helpers import (
    CONFLICT,
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
from gridledger_core.ledger.rules.money import ceil_micro
from gridledger_core.market import ledger_view as view

ASK = 250_000
ALLOCATION = 10**12


@pytest.fixture()
def net(genesis: Genesis, consortium_dir: Path) -> Net:
    return new_net(genesis, consortium_dir)


def test_treasury_funds_a_known_account_and_supply_grows(net: Net) -> None:
    assert net.commit(net.fund("meter-1", 5_000)) == [(VALID, "")]
    assert net.account("meter-1").balance_micro == ALLOCATION + 5_000
    raw = net.ledger.get_state(schema.money_entry_key("meter-1", 0))
    assert raw is not None
    entry = settlement_pb2.MoneyEntry.FromString(raw)
    assert (entry.kind, entry.balance_delta_micro, entry.height) == (
        settlement_pb2.ENTRY_KIND_FUNDING, 5_000, 1)


@pytest.mark.parametrize("case", ["meter", "admin", "settlement", "unknown_account", "zero",
                                  "empty_account"])
def test_funding_refusals_name_the_rule_and_change_nothing(net: Net, case: str) -> None:
    envelope, code, text = {
        "meter": (net.fund("meter-1", 1, signer="meter-1"), NOT_AUTHORIZED, "treasury"),
        "admin": (net.fund("meter-1", 1, signer="admin"), NOT_AUTHORIZED, "treasury"),
        "settlement": (net.fund("meter-1", 1, signer=net.settler), NOT_AUTHORIZED, "treasury"),
        "unknown_account": (net.fund("meter-99", 1), CONFLICT, "unknown_account"),
        "zero": (net.fund("meter-1", 0), INVALID, "positive"),
        "empty_account": (net.fund("", 1), INVALID, "name the account"),
    }[case]
    before = net.dump()
    [(got, message)] = net.commit(envelope)
    assert (code_name(got), text in message) == (code_name(code), True), message
    assert net.dump() == before


def test_transfer_moves_own_balance_and_refuses_the_rest(net: Net) -> None:
    assert net.commit(net.transfer("meter-1", "meter-2", 700)) == [(VALID, "")]
    assert (net.account("meter-1").balance_micro, net.account("meter-2").balance_micro) == (
        ALLOCATION - 700, ALLOCATION + 700)
    before = net.dump()
    for envelope, code, text in [
        (net.transfer("meter-1", "meter-2", ALLOCATION), CONFLICT, "insufficient_funds"),
        (net.transfer("meter-1", "meter-1", 5), INVALID, "self-transfer"),
        (net.transfer("meter-1", "nobody", 5), CONFLICT, "unknown_account"),
        (net.transfer("meter-1", "meter-2", 0), INVALID, "positive"),
    ]:
        [(got, message)] = net.commit(envelope)
        assert (code_name(got), text in message) == (code_name(code), True), message
        assert net.dump() == before


def test_buy_reserves_its_limit_cost_and_a_fill_releases_above_the_trade_value(net: Net) -> None:
    sell = net.order("meter-1", SELL, ASK, 3000)
    assert net.commit(sell) == [(VALID, "")]
    buy = net.order("meter-2", BUY, 300_000, 2000)
    assert net.commit(buy) == [(VALID, "")]
    record = net.record(tx_id(buy))
    trade_value = ASK * 2000 // 1000
    assert record.fills[0].value_micro == trade_value
    # Filled whole at the ask: only the trade value stays reserved (limit 300,000 released).
    assert record.reserved_micro == trade_value
    meter2 = net.account("meter-2")
    assert (meter2.balance_micro, meter2.reserved_micro) == (ALLOCATION - trade_value,
                                                             trade_value)
    # A resting buy reserves its limit cost for the open quantity.
    rest = net.order("meter-3", BUY, 200_000, 1500)
    assert net.commit(rest) == [(VALID, "")]
    assert net.record(tx_id(rest)).reserved_micro == ceil_micro(200_000, 1500) == 300_000
    # Cancel gives the open quantity's escrow back.
    assert net.commit(net.cancel("meter-3", tx_id(rest))) == [(VALID, "")]
    assert net.account("meter-3") == settlement_pb2.MoneyAccount(
        account="meter-3", balance_micro=ALLOCATION, entries=2)


def test_maker_buy_filled_by_a_later_sell_keeps_its_trade_value(net: Net) -> None:
    bid = net.order("meter-2", BUY, 300_000, 2000)
    assert net.commit(bid) == [(VALID, "")]
    assert net.commit(net.order("meter-1", SELL, ASK, 500)) == [(VALID, "")]
    record = net.record(tx_id(bid))
    # The trade is at the maker's (the bid's) price: 500 Wh at 300,000 µ/kWh.
    assert record.reserved_micro == ceil_micro(300_000, 1500) + 150_000
    assert record.remaining_wh == 1500


def test_unfunded_buy_is_refused_by_name_at_commit_and_changes_nothing(net: Net) -> None:
    assert net.commit(net.transfer("meter-2", "meter-1", ALLOCATION - 100_000)) == [(VALID, "")]
    before = net.dump()
    # 1,000 Wh at 250,000 µ/kWh needs 250,000 µ; meter-2 has 100,000.
    [(code, message)] = net.commit(net.order("meter-2", BUY, ASK, 1000))
    assert code == CONFLICT and message.startswith("insufficient_funds: "), message
    assert net.dump() == before


def test_open_orders_expire_at_gate_closure_and_release_their_escrow(net: Net) -> None:
    sell = net.order("meter-1", SELL, ASK, 3000)
    buy = net.order("meter-2", BUY, 200_000, 1000)
    assert net.commit(sell, buy) == [(VALID, ""), (VALID, "")]
    partial = net.order("meter-3", BUY, ASK, 500)
    assert net.commit(partial) == [(VALID, "")]
    assert net.commit(at=GATE - 1) == []  # one second before gate closure: still open
    assert net.record(tx_id(sell)).remaining_wh == 2500
    assert net.commit(at=GATE) == []  # the first block at gate closure expires the slot
    seller, bidder = net.record(tx_id(sell)), net.record(tx_id(buy))
    assert (seller.remaining_wh, seller.expired_wh, len(seller.fills)) == (0, 2500, 1)
    assert (bidder.remaining_wh, bidder.expired_wh, bidder.reserved_micro) == (0, 1000, 0)
    assert net.account("meter-2").reserved_micro == 0
    assert list(net.ledger.scan_state(schema.order_book_prefix(SLOT))) == []
    # The partial buyer keeps exactly its trade value reserved for settlement.
    assert net.account("meter-3").reserved_micro == ASK * 500 // 1000


def test_sell_collateral_is_reserved_and_required(genesis: Genesis, consortium_dir: Path,
                                                  tmp_path: Path) -> None:
    doc = json.loads(genesis.raw)
    doc["settlement"]["sell_collateral_micro_per_kwh"] = 50_000
    doc["settlement"]["allocations"]["meter-1"] = 100_000
    collateral = Genesis.parse(json.dumps(doc).encode())
    net = new_net(collateral, consortium_dir)
    sell = net.order("meter-1", SELL, ASK, 1000)
    assert net.commit(sell) == [(VALID, "")]
    assert net.record(tx_id(sell)).reserved_micro == 50_000
    assert net.commit(net.order("meter-2", BUY, ASK, 400)) == [(VALID, "")]
    assert net.record(tx_id(sell)).reserved_micro == 50_000  # filled part stays until settled
    [(code, message)] = net.commit(net.order("meter-1", SELL, ASK, 1100))
    assert code == CONFLICT and message.startswith("insufficient_funds: "), message
    assert net.commit(net.cancel("meter-1", tx_id(sell))) == [(VALID, "")]
    assert net.record(tx_id(sell)).reserved_micro == ceil_micro(50_000, 400) == 20_000


def test_genesis_requires_a_shortfall_price_at_least_the_price_cap(genesis: Genesis) -> None:
    doc = json.loads(genesis.raw)
    doc["settlement"]["shortfall_price_micro_per_kwh"] = genesis.market.price_max - 1
    with pytest.raises(ValueError, match="shortfall_price"):
        Genesis.parse(json.dumps(doc).encode())
    doc["settlement"]["balancing_account"] = ""  # no imbalance pricing: no constraint
    Genesis.parse(json.dumps(doc).encode())


def test_one_block_expires_every_closed_slot_and_stops_at_the_first_open_one(
        net: Net) -> None:
    slots = (SLOT, SLOT + 3600, SLOT + 7200)
    for later in slots[1:]:
        extra = history(net.ids["meter-1"], net.endorser, later, 2000, 500)
        assert {c for c, _ in net.commit_raw(extra)} == {VALID}
    orders = [net.order("meter-1", SELL, ASK, 1000, slot=slot) for slot in slots]
    assert net.commit(*orders) == [(VALID, "")] * 3
    assert net.commit(at=GATE + 3600) == []  # the first two slots have closed, not the third
    records = [net.record(tx_id(o)) for o in orders]
    assert [(r.remaining_wh, r.expired_wh) for r in records] == [(0, 1000), (0, 1000),
                                                                  (1000, 0)]
    assert [k for k, _ in net.ledger.scan_state("order-book/")] == [
        view.book_key(records[2])]


def test_escrow_cannot_be_spent_while_an_order_holds_it(net: Net) -> None:
    bid = net.order("meter-2", BUY, 200_000, 1000)
    assert net.commit(bid) == [(VALID, "")]
    available = net.account("meter-2").balance_micro
    assert available == ALLOCATION - 200_000
    [(code, message)] = net.commit(net.transfer("meter-2", "meter-1", available + 1))
    assert code == CONFLICT and "insufficient_funds" in message
    assert net.commit(net.transfer("meter-2", "meter-1", available)) == [(VALID, "")]
    assert (net.account("meter-2").balance_micro, net.account("meter-2").reserved_micro) == (
        0, 200_000)
