"""The agent's new-energy logic against a fake ledger: neighbour hints count only once the
ledger confirms them, the plant signs only what it can supply, the meter countersigns only
what it asked for, and Modbus plants derive shortfalls from their readings."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from gridledger.common.v1 import energy_pb2, transaction_pb2
from gridledger.meteragent.v1 import meteragent_pb2
from gridledger_core.energy.shortfall import windows_from_readings
from gridledger_core.energy.terms import TERMS_FORMAT, contract_id
from gridledger_core.genesis import Genesis
from gridledger_core.plants import ScoringWeights
from gridledger_core.rpc.tls import TlsFiles
from gridledger_core.signing_identity import SigningIdentity
from gridledger_meter_agent.buyer import Buyer, BuyerConfig, TermsRejected
from gridledger_meter_agent.directory import LEDGER, PlantDirectory
from gridledger_meter_agent.issuer import Issuer
from gridledger_meter_agent.neighbours import NeighbourPoller
from gridledger_meter_agent.plant import PlantAgent, PlantConfig, ProposalRefused


class FakeLedger:
    def __init__(self, plants: dict[str, energy_pb2.PlantRecord]) -> None:
        self.plants = plants

    def plant(self, name: str) -> energy_pb2.PlantRecord | None:
        return self.plants.get(name)


def record(name: str, price: int = 100_000, remaining: int = 5_000,
           windows: list[tuple[int, int]] | None = None,
           readings: int = 1) -> energy_pb2.PlantRecord:
    return energy_pb2.PlantRecord(
        plant=name, price_micro_per_kwh=price, remaining_wh=remaining,
        pv_panel_ids=[f"{name}-pv-1"], coin_value_micro=100, announcement_tx_id="ab" * 32,
        shortfall_windows=[energy_pb2.ShortfallWindow(start=s, end=e) for s, e in windows or []],
        live_readings=readings, last_reading_end=int(time.time()))


class FakeNeighbour:
    def __init__(self, plants: list[str]) -> None:
        self.plants = plants

    def GetPlantDirectory(self, request: object, timeout: float) -> object:
        return meteragent_pb2.GetPlantDirectoryResponse(entries=[
            meteragent_pb2.DirectoryEntry(plant=p, price_micro_per_kwh=1) for p in self.plants])


def test_neighbour_hints_count_only_when_the_ledger_has_the_plant() -> None:
    ledger = FakeLedger({"plant-1": record("plant-1"), "plant-2": record("plant-2", 90_000)})
    directory = PlantDirectory(ledger)  # type: ignore[arg-type]
    poller = NeighbourPoller(directory, {"meter-1": FakeNeighbour(["plant-2", "ghost"])},
                             threading.Event())  # type: ignore[dict-item]
    poller.poll_once()
    assert [(p, e.source) for p, e in directory.entries()] == [("plant-2", "neighbour:meter-1")]
    assert poller.rounds == 1
    # The ranking uses the ledger's price (90 000), not the hint's (1).
    ranked = directory.rank(100, ScoringWeights())
    assert ranked.ranking.ranked[0].candidate.price_micro_per_kwh == 90_000
    assert ranked.sources == {"plant-2": "neighbour:meter-1"}
    # A later hint does not rewrite the source; seeing the announcement on the ledger does.
    directory.learn("plant-2", "neighbour:meter-2")
    assert dict(directory.entries())["plant-2"].source == "neighbour:meter-1"
    directory.learn("plant-2", LEDGER)
    assert dict(directory.entries())["plant-2"].source == LEDGER


def _plant(consortium_dir: Path, remaining: int) -> PlantAgent:
    ledger = FakeLedger({"plant-1": record("plant-1", remaining=remaining)})
    config = PlantConfig(price_micro_per_kwh=100_000, threshold_w=1, pv_panel_ids=("p",),
                         coin_value_micro=100, endpoint="x", announce_seconds=60)
    return PlantAgent(SigningIdentity.load(consortium_dir, "plant-1"), ledger,  # type: ignore[arg-type]
                      config, None)


def test_plant_signs_terms_only_for_energy_it_has(consortium_dir: Path) -> None:
    plant = _plant(consortium_dir, remaining=500)
    envelope, cid = plant.propose("meter-1", 500, coins_paid=10)
    terms = energy_pb2.SupplyContractTerms.FromString(envelope.payload)
    assert (terms.format, terms.meter, terms.energy_wh, terms.plant_remaining_wh) == (
        TERMS_FORMAT, "meter-1", 500, 500)
    assert cid == contract_id(envelope.payload) and plant.contracts_signed == 1
    with pytest.raises(ProposalRefused, match="only 500 Wh remaining"):
        plant.propose("meter-1", 501, 0)
    with pytest.raises(ProposalRefused, match="would pay more"):
        plant.propose("meter-1", 100, 101)  # 100 Wh at 0.1/kWh is worth 100 coins of 100 µ


def test_meter_countersigns_only_the_terms_it_asked_for(consortium_dir: Path,
                                                        genesis: Genesis) -> None:
    meter = SigningIdentity.load(consortium_dir, "meter-1")
    buyer = Buyer(meter, genesis, None, None, None,  # type: ignore[arg-type]
                  BuyerConfig(100, ScoringWeights()),
                  TlsFiles.for_node(consortium_dir, "meter-1"), consortium_dir / "certs")
    plant = _plant(consortium_dir, remaining=5_000)
    announced = record("plant-1")
    good, _ = plant.propose("meter-1", 100, 0)
    buyer._check_terms(good, announced, 100, 0)
    with pytest.raises(TermsRejected):
        buyer._check_terms(good, record("plant-1", price=99_000), 100, 0)  # price changed
    with pytest.raises(TermsRejected):
        buyer._check_terms(good, announced, 200, 0)
    impostor = SigningIdentity.load(consortium_dir, "plant-2").sign_envelope(good.payload)
    with pytest.raises(TermsRejected):
        buyer._check_terms(impostor, announced, 100, 0)


def test_modbus_plant_shortfalls_from_readings() -> None:
    day = 1_700_006_400  # a UTC midnight
    readings = [(day + h * 3600, 3600, wh) for h, wh in
                [(7, 0), (8, 900), (9, 10), (10, 20), (11, 900), (14, 5), (15, 0)]]
    assert windows_from_readings(readings, threshold_w=100, supply_hours_utc=(8, 15)) == [
        (day + 9 * 3600, day + 11 * 3600), (day + 14 * 3600, day + 15 * 3600)]


def test_a_plant_without_readings_is_unscored_and_never_chosen() -> None:
    """Reliability is evidence: a cheap plant that never posted a reading is excluded, and
    measured shortfalls lower a plant's score although it declared none."""
    now = int(time.time())
    silent = record("plant-1", price=50_000, readings=0)
    short = record("plant-2", price=100_000)
    short.measured_shortfall_windows.append(
        energy_pb2.ShortfallWindow(start=now - 86_400, end=now - 3_600))
    clean = record("plant-3", price=100_000)
    directory = PlantDirectory(FakeLedger({"plant-1": silent, "plant-2": short,  # type: ignore[arg-type]
                                           "plant-3": clean}))
    for plant in ("plant-1", "plant-2", "plant-3"):
        directory.learn(plant, LEDGER)
    ranking = directory.rank(100, ScoringWeights()).ranking
    assert [s.plant_id for s in ranking.ranked] == ["plant-3", "plant-2"]
    assert [(e.candidate.plant_id, e.reason.split(":")[0]) for e in ranking.excluded] == [
        ("plant-1", "unscored")]
    assert dict(directory.entries())["plant-1"].reliability_bp is None


def test_meter_refuses_terms_without_a_sane_delivery_deadline(consortium_dir: Path,
                                                              genesis: Genesis) -> None:
    meter = SigningIdentity.load(consortium_dir, "meter-1")
    buyer = Buyer(meter, genesis, None, None, None,  # type: ignore[arg-type]
                  BuyerConfig(100, ScoringWeights()),
                  TlsFiles.for_node(consortium_dir, "meter-1"), consortium_dir / "certs")
    plant = _plant(consortium_dir, remaining=5_000)
    good, _ = plant.propose("meter-1", 100, 0)
    terms = energy_pb2.SupplyContractTerms.FromString(good.payload)
    assert terms.deliver_by == pytest.approx(time.time() + 86_400, abs=5)
    for deliver_by in (0, int(time.time()) + genesis.settlement.max_contract_seconds + 60):
        terms.deliver_by = deliver_by
        bad = SigningIdentity.load(consortium_dir, "plant-1").sign_envelope(
            terms.SerializeToString())
        with pytest.raises(TermsRejected, match="deliver by"):
            buyer._check_terms(bad, record("plant-1"), 100, 0)


class IssuerLedger:
    """Two ended contracts: one delivered nothing, one 100 Wh; records what is submitted."""

    def __init__(self) -> None:
        self.submitted: list[str] = []

    def contracts(self, **_: object) -> list[energy_pb2.SupplyContractRecord]:
        ended = energy_pb2.CONTRACT_STATUS_ENDED
        return [energy_pb2.SupplyContractRecord(contract_id="a" * 64, meter="meter-1",
                                                delivered_wh=0, status=ended),
                energy_pb2.SupplyContractRecord(contract_id="b" * 64, meter="meter-2",
                                                delivered_wh=100, status=ended)]

    def submit_and_wait(self, envelope: object) -> tuple[str, int, str]:
        tx = transaction_pb2.Transaction.FromString(envelope.payload)  # type: ignore[attr-defined]
        self.submitted.append(tx.carbon_coin_issue.contract_id)
        return "tx", 1, ""


def test_issuer_never_issues_for_a_contract_that_earned_no_coin(consortium_dir: Path,
                                                                 genesis: Genesis) -> None:
    ledger = IssuerLedger()
    issuer = Issuer(SigningIdentity.load(consortium_dir, "issuer"), genesis,
                    ledger)  # type: ignore[arg-type]
    assert issuer.issue_once() == 1
    assert ledger.submitted == ["b" * 64]
