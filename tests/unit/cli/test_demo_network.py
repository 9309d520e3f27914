"""The demo network of `make run` (issue 14 item 10): the genesis profiles, the money
accounts of the devnet topology, genesis assembly with a settlement section, the launcher's
plan (settlement agent, demo cast) and the live summary's lines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from grpc_helpers import StatusError

from gridctl import devnet
from gridctl.live_summary import LiveSummary
from gridctl.main import main
from gridledger.committer.v1 import committer_pb2
from gridledger.common.v1 import energy_pb2, market_pb2, settlement_pb2
from gridledger_core.consortium import (
    BALANCING_ACCOUNT,
    FAST,
    SETTLEMENT_ACCOUNT,
    STANDARD,
    TREASURY_ACCOUNT,
    create_consortium,
    default_topology,
)
from gridledger_core.genesis import Genesis
from gridledger_core.identity import Role
from gridledger_core.ledger import schema


@pytest.fixture(scope="module")
def fast_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fast")
    create_consortium(directory, default_topology(), profile=FAST)
    return directory


def test_the_fast_profile_runs_a_whole_cycle_in_minutes(fast_dir: Path) -> None:
    genesis = Genesis.load(fast_dir / "genesis.json")
    m = genesis.market
    assert (genesis.reading_interval_seconds, m.slot_seconds, m.gate_closure_seconds,
            genesis.reading_submission_window_seconds) == (30, 60, 30, 30)
    assert m.slot_seconds % genesis.reading_interval_seconds == 0
    # An order placed for the next open slot is settled within 3 slots of being placed.
    assert m.gate_closure_seconds + m.slot_seconds \
        + genesis.reading_submission_window_seconds <= 180
    assert m.open_before_seconds >= 3600
    # Imbalance prices bracket the band, so not delivering never pays.
    s = genesis.settlement
    assert s.shortfall_price_micro_per_kwh >= m.price_max
    assert s.surplus_price_micro_per_kwh <= m.price_min


def test_the_standard_profile_keeps_production_figures(tmp_path: Path) -> None:
    genesis = Genesis.load(create_consortium(tmp_path, default_topology()))
    assert genesis.reading_interval_seconds == STANDARD.reading_interval_seconds == 900
    assert genesis.market.slot_seconds == 3600
    assert genesis.market.gate_closure_seconds == 3600
    assert genesis.reading_submission_window_seconds == 3600


def test_money_accounts_of_the_initiating_organisation_and_allocations(fast_dir: Path) -> None:
    genesis = Genesis.load(fast_dir / "genesis.json")
    assert genesis.initiating_account(TREASURY_ACCOUNT, Role.TREASURY)
    assert genesis.initiating_account(SETTLEMENT_ACCOUNT, Role.SETTLEMENT)
    assert genesis.initiating_account(BALANCING_ACCOUNT, Role.SETTLEMENT)
    assert genesis.settlement.balancing_account == BALANCING_ACCOUNT
    devices = [a.name for a in genesis.accounts.values() if a.role in (Role.METER, Role.PLANT)]
    assert set(genesis.settlement.allocations) == {*devices, BALANCING_ACCOUNT,
                                                   TREASURY_ACCOUNT}
    assert all(v > 0 for v in genesis.settlement.allocations.values())


def test_an_explicit_settlement_section_overrides_the_profile(tmp_path: Path) -> None:
    section = {"balancing_account": "", "allocations": {"meter-1": 5}}
    genesis = Genesis.load(create_consortium(tmp_path, default_topology(), profile=FAST,
                                             settlement=section))
    assert genesis.settlement.allocations == {"meter-1": 5}
    assert genesis.settlement.balancing_account == ""


def _enrol(root: Path, balancing: str, allocations: list[str]) -> Path:
    orgs = {"gridops": ["admin:admin", "orderer-1:orderer", "treasury:treasury",
                        "settlement:settlement"],
            "community": ["meter-1:meter"]}
    files = []
    for org, nodes in orgs.items():
        argv = ["org", "init", org, "--out", str(root / org), "--json"]
        for node in nodes:
            argv += ["--node", node]
        main(argv)
        files.append(root / f"{org}.json")
        shutil.copy(root / org / "org.json", files[-1])
    argv = ["genesis", "assemble", "--consortium", "t", "--initiating", "gridops",
            "--out", str(root / "genesis"), "--profile", "fast", "--balancing", balancing]
    for allocation in allocations:
        argv += ["--allocation", allocation]
    main([*argv, *map(str, files)])
    return root / "genesis" / "genesis.json"


def test_genesis_assembly_writes_the_settlement_section(tmp_path: Path) -> None:
    path = _enrol(tmp_path, "settlement", ["meter-1=1000000", "settlement=5000000"])
    genesis = Genesis.load(path)
    assert genesis.settlement.balancing_account == "settlement"
    assert genesis.settlement.allocations == {"meter-1": 1_000_000, "settlement": 5_000_000}
    assert genesis.market.slot_seconds == FAST.market.slot_seconds
    assert json.loads(path.read_text())["readings"]["submission_window_seconds"] == 30


def test_genesis_assembly_refuses_a_balancing_account_outside_the_initiating_org(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _enrol(tmp_path, "meter-1", [])
    assert "not a settlement or treasury account of the initiating" in capsys.readouterr().err


def test_the_plan_runs_the_settlement_agent_and_the_demo_cast(fast_dir: Path,
                                                              tmp_path: Path) -> None:
    genesis = Genesis.load(fast_dir / "genesis.json")
    network = devnet.plan(tmp_path, fast_dir, demo=True, **devnet.demo_settings(genesis))
    args = {n.name: n.args for n in network.nodes}
    assert args["settlement"][args["settlement"].index("--mode") + 1] == "settlement"
    assert args["issuer"][args["issuer"].index("--mode") + 1] == "issuer"
    # No process holds the balancing account's or the treasury's key.
    assert BALANCING_ACCOUNT not in args and TREASURY_ACCOUNT not in args

    def flag(name: str, option: str) -> str:
        return args[name][len(args[name]) - 1 - args[name][::-1].index(option) + 1]

    assert flag("meter-1", "--base-load-w") == "3000" and flag("meter-1", "--pv-kwp") == "0"
    assert float(flag("meter-2", "--wind-kw")) > 0
    assert all(float(flag(p, "--wind-kw")) > 0 and float(flag(p, "--outage-probability")) == 0
               for p in ("plant-1", "plant-2"))
    # Sellers order earlier than buyers, so their orders rest on the book when buys come.
    leads = {m: int(flag(m, "--presale-lead")) for m in ("meter-1", "meter-2", "meter-3")}
    assert leads["meter-2"] > leads["meter-3"] > leads["meter-1"] == 0
    assert int(flag("meter-1", "--backfill-hours")) >= 24


# -- the live summary -------------------------------------------------------------------------

SLOT = 1_796_218_260


class FakeCommitter:
    def __init__(self) -> None:
        self.state: dict[str, bytes] = {}
        self.contracts: list[energy_pb2.SupplyContractRecord] = []

    def order(self, order_id: str, meter: str, side: int, quantity: int, sequence: int) -> None:
        record = market_pb2.OrderRecord(order_id=order_id, owner=meter, side=side,
                                        slot_start=SLOT, quantity_wh=quantity, sequence=sequence)
        self.state[schema.order_key(order_id)] = record.SerializeToString()
        self.state[schema.order_meter_key(meter, SLOT, sequence)] = order_id.encode()

    def trade(self, sequence: int, buy: str, sell: str, quantity: int) -> None:
        record = market_pb2.TradeRecord(slot_start=SLOT, sequence=sequence, buy_order_id=buy,
                                        sell_order_id=sell, buyer="meter-1", seller="meter-2",
                                        price=120_000, quantity_wh=quantity,
                                        value_micro=120 * quantity)
        self.state[schema.trade_key(SLOT, sequence)] = record.SerializeToString()

    def _page(self, prefix: str, token: str, size: int) -> tuple[list[str], str]:
        assert token.startswith(prefix)
        keys = sorted(k for k in self.state if k.startswith(prefix) and k >= token)
        return keys[:size], keys[size] if len(keys) > size else ""

    def ListOrders(self, request: committer_pb2.ListOrdersRequest,
                   timeout: float) -> committer_pb2.ListOrdersResponse:
        keys, token = self._page(schema.order_meter_prefix(request.meter), request.page_token,
                                 request.page_size)
        return committer_pb2.ListOrdersResponse(orders=[
            market_pb2.OrderRecord.FromString(self.state[schema.order_key(
                self.state[k].decode())]) for k in keys], next_page_token=token)

    def ListTrades(self, request: committer_pb2.ListTradesRequest,
                   timeout: float) -> committer_pb2.ListTradesResponse:
        keys, token = self._page(schema.trade_prefix(), request.page_token, request.page_size)
        return committer_pb2.ListTradesResponse(
            trades=[market_pb2.TradeRecord.FromString(self.state[k]) for k in keys],
            next_page_token=token)

    def GetState(self, request: committer_pb2.GetStateRequest,
                 timeout: float) -> committer_pb2.GetStateResponse:
        value = self.state.get(request.key)
        return committer_pb2.GetStateResponse(found=value is not None, value=value or b"")

    def ListContracts(self, request: object,
                      timeout: float) -> committer_pb2.ListContractsResponse:
        return committer_pb2.ListContractsResponse(contracts=self.contracts)


def test_the_live_summary_tells_each_step_of_the_cycle_once(fast_dir: Path) -> None:
    summary = LiveSummary(Genesis.load(fast_dir / "genesis.json"))
    c = FakeCommitter()
    assert summary.poll(c) == []  # type: ignore[arg-type]
    c.order("s1", "meter-2", market_pb2.ORDER_SIDE_SELL, 50, 1)
    c.order("b1", "meter-1", market_pb2.ORDER_SIDE_BUY, 30, 2)
    c.trade(3, "b1", "s1", 30)
    events = summary.poll(c)  # type: ignore[arg-type]
    assert len(events) == 1 and "meter-2 -> meter-1 30 Wh" in events[0]
    assert "partial fill of the sell order" in events[0]
    assert "orders 2 (buy 1, sell 1)" in summary.line()
    assert "trades 1 (30 Wh, 1 partial fills)" in summary.line()
    assert summary.poll(c) == []  # type: ignore[arg-type]  # nothing told twice

    c.state[schema.settlement_key(SLOT)] = settlement_pb2.SlotSettlement(
        slot_start=SLOT, meters=2, trades=1, traded_wh=30, delivered_wh=30, shortfall_wh=12,
        surplus_wh=40, imbalance_charges_micro=12_000, imbalance_credits_micro=400
    ).SerializeToString()
    contract = energy_pb2.SupplyContractRecord(
        contract_id="c" * 64, meter="meter-1", plant="plant-2", energy_wh=50,
        price_micro_per_kwh=100_000, amount_micro=5_000,
        status=energy_pb2.CONTRACT_STATUS_OPEN)
    c.contracts = [contract]
    events = summary.poll(c)  # type: ignore[arg-type]
    assert any(e.startswith("settled") and "short 12 Wh" in e and "surplus 40 Wh" in e
               for e in events)
    assert any(e.startswith("signed") and "plant-2 -> meter-1" in e for e in events)
    assert "settled 1 slots (imbalance: short 12 Wh, surplus 40 Wh, 12400 µ)" in summary.line()

    contract.status, contract.delivered_wh = energy_pb2.CONTRACT_STATUS_ENDED, 50
    contract.end_reason, contract.paid_micro = "fulfilled", 5_000
    assert any(e.startswith("ended") and "50 of 50 Wh delivered (fulfilled), 5000 µ paid" in e
               for e in summary.poll(c))  # type: ignore[arg-type]
    contract.status, contract.coins_issued = energy_pb2.CONTRACT_STATUS_ISSUED, 20
    paid = energy_pb2.SupplyContractRecord(
        contract_id="d" * 64, meter="meter-1", plant="plant-2", energy_wh=50,
        price_micro_per_kwh=100_000, amount_micro=5_000, coins_paid=20, coin_value_micro=100,
        status=energy_pb2.CONTRACT_STATUS_OPEN)
    c.contracts = [contract, paid]
    events = summary.poll(c)  # type: ignore[arg-type]
    assert any(e.startswith("issued") and "20 carbon coins and a certificate" in e
               for e in events)
    assert any("20 carbon coins pay 2000 µ of it" in e for e in events)
    line = summary.line()
    assert "coins issued 20, certificates 1, coins paid 20" in line
    assert "contracts issued 1, open 1" in line


def test_the_live_summary_raises_when_the_committer_is_away(fast_dir: Path) -> None:
    class Away(FakeCommitter):
        def ListOrders(self, request: object, timeout: float) -> None:  # type: ignore[override]
            raise StatusError(__import__("grpc").StatusCode.UNAVAILABLE, "away")

    summary = LiveSummary(Genesis.load(fast_dir / "genesis.json"))
    with pytest.raises(StatusError):
        summary.poll(Away())  # type: ignore[arg-type]


def test_a_contract_that_ended_and_got_its_coins_between_two_ticks_is_told_both(
        fast_dir: Path) -> None:
    summary = LiveSummary(Genesis.load(fast_dir / "genesis.json"))
    c = FakeCommitter()
    contract = energy_pb2.SupplyContractRecord(
        contract_id="e" * 64, meter="meter-1", plant="plant-1", energy_wh=50,
        status=energy_pb2.CONTRACT_STATUS_OPEN)
    c.contracts = [contract]
    summary.poll(c)  # type: ignore[arg-type]
    contract.status, contract.delivered_wh = energy_pb2.CONTRACT_STATUS_ISSUED, 50
    contract.coins_issued = 20
    events = summary.poll(c)  # type: ignore[arg-type]
    assert [e.split()[0] for e in events] == ["ended", "issued"]


def test_a_consortium_without_money_is_refused_with_what_to_do(tmp_path: Path) -> None:
    consortium = tmp_path / "consortium"
    devnet.ensure_consortium(consortium, profile="fast")
    doc = json.loads((consortium / "genesis.json").read_text())
    del doc["settlement"]  # as genesis files made before issue 14
    (consortium / "genesis.json").write_text(json.dumps(doc))
    with pytest.raises(SystemExit, match=r"no settlement accounts.*delete its directory"):
        devnet.ensure_consortium(consortium)
