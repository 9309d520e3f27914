"""A whole settlement cycle on the network `make run` starts (issue 14, item 10 and "Done
when"): the fast genesis profile, the demo traffic and the settlement agent, through the same
launcher users run. Within minutes: crossing pre-sale orders with partial fills, slots settled
by the settlement agent, a supply contract delivered, ended, its coins and certificate issued,
and the meter's next contract paid partly in those coins.

Then the ledger is checked against itself from the outside: every stored MeterStatement is
recomputed from the committed trades and readings with the formulas of docs/architecture.md
("Settlement"), money is conserved (all balances + reserves == the money supply), and
`gridctl ledger verify` replays the chain to the same state (so every settlement is
reproduced by replay)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from devnet_support import committer_stub, demo_network

from gridctl import devnet
from gridctl.live_summary import LiveSummary
from gridctl.main import main
from gridledger.committer.v1 import committer_pb2
from gridledger.common.v1 import energy_pb2, settlement_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.ledger import schema

pytestmark = pytest.mark.integration

CYCLE_TIMEOUT_S = 300  # the README promises the cycle within 5 minutes of `make run`


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devnet.Network]:
    with demo_network(tmp_path_factory.mktemp("cycle"), profile="fast") as net:
        yield net


def _wait_for_the_cycle(net: devnet.Network, genesis: Genesis) -> LiveSummary:
    """Poll the live summary (what `make run` shows) until every step of the cycle is there."""
    stub = committer_stub(net, "committer-1")
    summary = LiveSummary(genesis)
    seen: list[str] = []
    deadline = time.monotonic() + CYCLE_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(grpc.RpcError):  # a committer busy or restarting
            seen += summary.poll(stub)
        t = summary.totals
        if (t.partial_fills and t.settled_slots and t.certificates and t.coins_paid
                and t.shortfall_wh + t.surplus_wh):
            return summary
        time.sleep(1.0)
    raise AssertionError(f"no full cycle after {CYCLE_TIMEOUT_S} s: {summary.line()}\n"
                         + "\n".join(seen[-40:]))


def _all(method: object, request: object, field: str) -> list:
    items, token = [], ""
    while True:
        request.page_token = token  # type: ignore[attr-defined]
        page = method(request, timeout=10)  # type: ignore[operator]
        items += list(getattr(page, field))
        token = page.next_page_token
        if not token:
            return items


def _slot_readings(stub: object, meter: str, slot: int, size: int) -> list:
    page = stub.ListReadings(committer_pb2.ListReadingsRequest(  # type: ignore[attr-defined]
        meter=meter, page_size=1000, page_token=schema.reading_key(meter, slot)), timeout=10)
    return [r for r in page.readings if slot <= r.interval_start < slot + size]


def _expected(genesis: Genesis, trades: list, readings: dict[str, list]
              ) -> dict[str, settlement_pb2.MeterStatement]:
    """The statements the formulas give (docs/architecture.md, "Settlement"), written out
    here independently of market/settlement_calc.py."""
    params = genesis.settlement
    out = {}
    for meter in sorted({t.buyer for t in trades} | {t.seller for t in trades}):
        sold = [t for t in trades if t.seller == meter]
        bought = [t for t in trades if t.buyer == meter]
        s_wh, b_wh = sum(t.quantity_wh for t in sold), sum(t.quantity_wh for t in bought)
        vs, vb = sum(t.value_micro for t in sold), sum(t.value_micro for t in bought)
        p = sum(r.produced_wh for r in readings[meter])
        c = sum(r.consumed_wh for r in readings[meter])
        imbalance = (p - c) - (s_wh - b_wh)
        shortfall, surplus = max(0, -imbalance), max(0, imbalance)
        charge = params.shortfall_price_micro_per_kwh * shortfall // 1000
        credit = params.surplus_price_micro_per_kwh * surplus // 1000
        out[meter] = settlement_pb2.MeterStatement(
            meter=meter, bought_wh=b_wh, sold_wh=s_wh, bought_value_micro=vb,
            sold_value_micro=vs, produced_wh=p, consumed_wh=c, readings=len(readings[meter]),
            delivered_sold_wh=min(s_wh, max(0, p - c + b_wh)), shortfall_wh=shortfall,
            surplus_wh=surplus, paid_micro=vs, paid_for_purchases_micro=vb,
            shortfall_charge_micro=charge, surplus_credit_micro=credit,
            # Every demo meter is funded well beyond its charges: nothing is left unpaid.
            unpaid_micro=0, net_micro=vs - vb - charge + credit)
    return out


FIELDS = ["bought_wh", "sold_wh", "bought_value_micro", "sold_value_micro", "produced_wh",
          "consumed_wh", "readings", "delivered_sold_wh", "shortfall_wh", "surplus_wh",
          "paid_micro", "paid_for_purchases_micro", "shortfall_charge_micro",
          "surplus_credit_micro", "unpaid_micro", "net_micro"]


def test_a_full_cycle_within_minutes_and_statements_match_the_readings(
        network: devnet.Network, capsys: pytest.CaptureFixture[str]) -> None:
    genesis = Genesis.load(network.consortium_dir / "genesis.json")
    size = genesis.market.slot_seconds
    summary = _wait_for_the_cycle(network, genesis)
    stub = committer_stub(network, "committer-1")

    # -- every settled slot: the statements are what the readings and trades say ----------
    slots = sorted({t.slot_start for t in _all(stub.ListTrades,
                                               committer_pb2.ListTradesRequest(page_size=1000),
                                               "trades")})
    settled = 0
    for slot in slots:
        try:
            answer = stub.GetSlotSettlement(committer_pb2.GetSlotSettlementRequest(
                slot_start=slot, page_size=1000), timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
            continue
        settled += 1
        record = answer.settlement
        assert record.settled_by == "settlement" and answer.withheld == 0
        trades = _all(stub.ListTrades, committer_pb2.ListTradesRequest(
            slot_start=slot, page_size=1000), "trades")
        meters = {t.buyer for t in trades} | {t.seller for t in trades}
        readings = {m: _slot_readings(stub, m, slot, size) for m in meters}
        expected = _expected(genesis, trades, readings)
        stored = {s.meter: s for s in answer.statements}
        assert set(stored) == set(expected), f"slot {slot}: statements of {sorted(stored)}"
        for meter, want in expected.items():
            got = stored[meter]
            assert got.slot_start == slot
            assert {f: getattr(got, f) for f in FIELDS} == {f: getattr(want, f)
                                                          for f in FIELDS}, \
                f"{meter}'s statement of slot {slot}"
        assert (record.trades, record.meters, record.traded_wh) == (
            len(trades), len(meters), sum(t.quantity_wh for t in trades))
        assert record.shortfall_wh == sum(s.shortfall_wh for s in expected.values())
        assert record.surplus_wh == sum(s.surplus_wh for s in expected.values())
        assert record.delivered_wh == sum(s.delivered_sold_wh for s in expected.values())
    assert settled >= 1 and summary.totals.shortfall_wh + summary.totals.surplus_wh > 0

    # -- a contract delivered and ended, coins and certificate, the next one paid in coins --
    contracts = _all(stub.ListContracts, committer_pb2.ListContractsRequest(page_size=1000),
                     "contracts")
    # Delivered in full (a contract closed after its deadline may be issued coins pro rata).
    issued = [c for c in contracts if c.status == energy_pb2.CONTRACT_STATUS_ISSUED
              and c.end_reason == "fulfilled"]
    assert issued and all(c.delivered_wh == c.energy_wh and c.coins_issued > 0 for c in issued)
    first = min(issued, key=lambda c: c.ended_at)
    view = stub.GetContract(committer_pb2.GetContractRequest(contract_id=first.contract_id),
                            timeout=10)
    assert view.certificate.payload, "the ended contract has no certificate"
    paid = [c for c in contracts if c.meter == first.meter and c.coins_paid > 0
            and c.committed_at >= first.ended_at]
    assert paid, f"no later contract of {first.meter} paid in coins"
    assert all(0 < c.coins_paid * c.coin_value_micro < c.amount_micro for c in paid), \
        "coins pay part of the contract, money the rest"

    # -- money is conserved: every balance and reserve adds up to the money supply --------
    total = 0
    for name in genesis.accounts:
        try:
            account = stub.GetAccount(committer_pb2.GetAccountRequest(account=name),
                                      timeout=10).account
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
            continue
        total += account.balance_micro + account.reserved_micro
    supply = stub.GetState(committer_pb2.GetStateRequest(key=schema.MONEY_SUPPLY), timeout=10)
    expected_supply = int.from_bytes(supply.value, "big") if supply.found \
        else sum(genesis.settlement.allocations.values())
    assert total == expected_supply

    # -- replaying the ledger reproduces every settlement ---------------------------------
    data_dir = Path(network.node("committer-2").data_dir)
    capsys.readouterr()
    main(["ledger", "verify", str(data_dir), "--consortium-dir", str(network.consortium_dir),
          "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["blocks_checked"] > 0
