"""New-energy rules (seed 002): announcements, contracts, trade ends, carbon coins. Every
refusal is checked for its code and for changing nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from energy_world import INTERVAL, VALID, World, accept_proof, new_world

from gridledger.common.v1 import energy_pb2, envelope_pb2, settlement_pb2
from gridledger_core.consortium import create_consortium, default_topology
from gridledger_core.energy import certificate
from gridledger_core.energy.terms import contract_id
from gridledger_core.genesis import Genesis
from gridledger_core.ledger import schema
from gridledger_core.ledger.errors import Code
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.storage import MemoryStore


@pytest.fixture()
def world(energy_genesis: Genesis, energy_dir: Path) -> World:
    return new_world(energy_genesis, energy_dir)


# -- announcements ----------------------------------------------------------------------------

def test_announcement_records_plant_and_keeps_every_announced_shortfall(world: World) -> None:
    t = world.now - 3 * 86400
    code, message, tx_id = world.submit(world.who("plant-1"), "plant_announcement",
                                        world.announce(windows=[(t, t + 3600)], price=90_000))
    assert code == VALID, message
    # The next announcement leaves the first window out and adds another: both stay.
    code, message, _ = world.submit(world.who("plant-1"), "plant_announcement",
                                    world.announce(windows=[(t + 7200, t + 9000)]))
    assert code == VALID, message
    record = world.plant()
    assert [(w.start, w.end) for w in record.shortfall_windows] == [(t, t + 3600),
                                                                   (t + 7200, t + 9000)]
    assert (record.price_micro_per_kwh, record.remaining_wh, record.announcements) == (
        100_000, 10_000, 3)
    assert record.organization == "solarco" and record.announcement_tx_id != tx_id


@pytest.mark.parametrize("case, code, text", [
    ("by_meter", Code.TX_VALIDATION_CODE_NOT_AUTHORIZED, "only plants announce"),
    ("for_other_plant", Code.TX_VALIDATION_CODE_NOT_AUTHORIZED, "may not announce for"),
    ("overlapping", Code.TX_VALIDATION_CODE_INVALID_BODY, "must not overlap"),
    ("future_window", Code.TX_VALIDATION_CODE_INVALID_BODY, "ends in the future"),
    ("no_panels", Code.TX_VALIDATION_CODE_INVALID_BODY, "pv_panel_ids"),
    ("price_too_high", Code.TX_VALIDATION_CODE_INVALID_BODY, "price"),
    ("stale_contracted", Code.TX_VALIDATION_CODE_STATE_CONFLICT, "stale announcement"),
])
def test_bad_announcements_are_refused(world: World, case: str, code: int, text: str) -> None:
    signer, body = world.who("plant-1"), world.announce()
    t = world.now - 86400
    if case == "by_meter":
        signer, body = world.who("meter-1"), world.announce("meter-1")
    elif case == "for_other_plant":
        body = world.announce("plant-2")
    elif case == "overlapping":
        body = world.announce(windows=[(t, t + 100), (t + 50, t + 200)])
    elif case == "future_window":
        body = world.announce(windows=[(world.now + 3600, world.now + 7200)])
    elif case == "no_panels":
        del body.pv_panel_ids[:]
    elif case == "price_too_high":
        body = world.announce(price=world.genesis.market.price_max + 1)
    elif case == "stale_contracted":
        assert world.contract()[0] == VALID
        body = world.announce(contracted=0)  # the ledger now has 100 Wh contracted
    world.refused(signer, "plant_announcement", body, code, text)


# -- supply contracts -------------------------------------------------------------------------

def test_contract_uses_up_remaining_energy_and_keeps_the_signed_terms(world: World) -> None:
    code, message, cid = world.contract(energy=400)
    assert code == VALID, message
    record = world.record(cid)
    assert record.status == energy_pb2.CONTRACT_STATUS_OPEN
    assert (record.energy_wh, record.plant_remaining_wh, record.amount_micro) == (400, 9_600,
                                                                                 40_000)
    assert record.delivery_start % INTERVAL == 0 and record.delivery_start >= world.now
    assert contract_id(record.plant_terms.payload) == cid  # exact bytes, as signed
    plant = world.plant()
    assert (plant.remaining_wh, plant.contracted_wh, plant.contracts) == (9_600, 400, 1)
    # A new announcement must account for the 400 Wh contracted meanwhile.
    code, message, _ = world.submit(world.who("plant-1"), "plant_announcement",
                                    world.announce(remaining=5_000, contracted=400))
    assert code == VALID, message


def _tampered_terms(world: World) -> energy_pb2.SupplyContract:
    terms = world.terms()
    terms.payload = terms.payload.replace(b"plant-1-pv-1", b"plant-1-pv-2")
    return energy_pb2.SupplyContract(plant_terms=terms)


@pytest.mark.parametrize("case, code, text", [
    ("oversized", Code.TX_VALIDATION_CODE_STATE_CONFLICT, "exceeds plant-1's remaining energy"),
    ("signed_by_other_plant", Code.TX_VALIDATION_CODE_NOT_AUTHORIZED, "signed by plant-2"),
    ("tampered_terms", Code.TX_VALIDATION_CODE_BAD_SIGNATURE, "does not verify"),
    ("terms_for_other_meter", Code.TX_VALIDATION_CODE_NOT_AUTHORIZED, "are for meter"),
    ("submitted_by_plant", Code.TX_VALIDATION_CODE_NOT_AUTHORIZED, "only meters buy"),
    ("expired", Code.TX_VALIDATION_CODE_INVALID_BODY, "expired"),
    ("unknown_panel", Code.TX_VALIDATION_CODE_INVALID_BODY, "PV panel"),
    ("second_open_contract", Code.TX_VALIDATION_CODE_STATE_CONFLICT, "already has open"),
    ("replayed_terms", Code.TX_VALIDATION_CODE_STATE_CONFLICT, "already on the ledger"),
    ("coins_not_held", Code.TX_VALIDATION_CODE_STATE_CONFLICT, "carbon coins, cannot pay"),
    ("coins_overpay", Code.TX_VALIDATION_CODE_INVALID_BODY, "would pay more"),
])
def test_bad_contracts_are_refused(world: World, case: str, code: int, text: str) -> None:
    meter = world.who("meter-1")
    terms = world.terms()
    if case == "oversized":
        terms = world.terms(energy=10_001)
    elif case == "signed_by_other_plant":
        terms = world.terms(signer="plant-2")
    elif case == "terms_for_other_meter":
        terms = world.terms(meter="meter-2")
    elif case == "submitted_by_plant":
        meter = world.who("plant-1")
    elif case == "expired":
        terms = world.terms(expires_in=-1)
    elif case == "unknown_panel":
        terms = world.terms(panel="plant-2-pv-1")
    elif case == "second_open_contract":
        assert world.contract()[0] == VALID
    elif case == "replayed_terms":
        assert world.submit(meter, "supply_contract",
                            energy_pb2.SupplyContract(plant_terms=terms))[0] == VALID
        # end it so the one-open-contract rule is not what refuses the replay
        world.deliver("meter-1", world.record(contract_id(terms.payload)).delivery_start, [100])
        assert world.submit(meter, "trade_end", energy_pb2.TradeEnd(
            contract_id=contract_id(terms.payload), delivered_wh=100))[0] == VALID
    elif case == "coins_not_held":
        terms = world.terms(coins=5)
    elif case == "coins_overpay":
        terms = world.terms(energy=100, coins=101)  # 100 Wh at 0.1/kWh = 10_000 µ = 100 coins
    body = energy_pb2.SupplyContract(plant_terms=terms)
    if case == "tampered_terms":
        body = _tampered_terms(world)
    world.refused(meter, "supply_contract", body, code, text)


def test_contract_with_a_plant_that_never_announced_is_refused(energy_genesis: Genesis,
                                                               energy_dir: Path) -> None:
    w = World(energy_genesis, energy_dir)
    w.refused(w.who("meter-1"), "supply_contract",
              energy_pb2.SupplyContract(plant_terms=w.terms()),
              Code.TX_VALIDATION_CODE_STATE_CONFLICT, "plant-1 has not announced")


# -- delivery and trade end -------------------------------------------------------------------

def test_delivery_counts_imports_from_delivery_start_capped_at_the_contract(world: World) -> None:
    code, _, cid = world.contract(energy=100)
    assert code == VALID
    start = world.record(cid).delivery_start
    world.deliver("meter-1", start - INTERVAL, [500])  # before the contract: never counts
    assert world.record(cid).attributed_wh == 0
    delivered = []
    for i, wh in enumerate([30, 0, 50, 400]):
        world.deliver("meter-1", start + i * INTERVAL, [wh])
        delivered.append(world.record(cid).attributed_wh)
    assert delivered == [30, 30, 80, 100]


def test_trade_end_only_when_fulfilled_and_only_by_the_meter(world: World) -> None:
    code, _, cid = world.contract(energy=100)
    assert code == VALID
    start = world.record(cid).delivery_start
    world.deliver("meter-1", start, [60])
    end = energy_pb2.TradeEnd(contract_id=cid, delivered_wh=100)
    world.refused(world.who("meter-1"), "trade_end", end, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
                  "is not fulfilled: 60 of 100 Wh delivered")
    world.deliver("meter-1", start + INTERVAL, [40])
    world.refused(world.who("meter-2"), "trade_end", end, Code.TX_VALIDATION_CODE_NOT_AUTHORIZED,
                  "only the contract's meter")
    world.refused(world.who("meter-1"), "trade_end",
                  energy_pb2.TradeEnd(contract_id=cid, delivered_wh=99),
                  Code.TX_VALIDATION_CODE_INVALID_BODY, "delivered_wh must be")
    world.refused(world.who("meter-1"), "trade_end",
                  energy_pb2.TradeEnd(contract_id="00" * 32, delivered_wh=100),
                  Code.TX_VALIDATION_CODE_STATE_CONFLICT, "no contract")
    code, message, tx_id = world.submit(world.who("meter-1"), "trade_end", end)
    assert code == VALID, message
    record = world.record(cid)
    assert (record.status, record.delivered_wh, record.trade_end_tx_id) == (
        energy_pb2.CONTRACT_STATUS_ENDED, 100, tx_id)
    assert world.ledger.get_state(schema.open_contract_key("meter-1")) is None
    assert world.plant().delivered_wh == 100
    world.refused(world.who("meter-1"), "trade_end", end, Code.TX_VALIDATION_CODE_STATE_CONFLICT,
                  "already ended")


# -- carbon coins and certificates ------------------------------------------------------------

def test_initiating_org_issues_coins_and_a_certificate_exactly_once(world: World) -> None:
    cid = world.fulfilled(energy=250)
    code, message, tx_id = world.issue(cid)
    assert code == VALID, message
    coins = 250 * world.genesis.carbon_grams_per_kwh // 1000
    assert world.coins("meter-1") == coins == 100
    record = world.record(cid)
    assert (record.status, record.coins_issued, record.issue_tx_id) == (
        energy_pb2.CONTRACT_STATUS_ISSUED, coins, tx_id)
    raw = world.ledger.get_state(schema.certificate_key(cid))
    assert raw is not None
    cert, signer = certificate.verify(envelope_pb2.SignedEnvelope.FromString(raw), world.genesis)
    assert (cert.meter, cert.delivered_wh, cert.avoided_grams, signer.name) == (
        "meter-1", 250, coins, "issuer")
    assert cert.trade_end_tx_id == record.trade_end_tx_id
    world.refused(world.who("issuer"), "carbon_coin_issue",
                  certificate.issue_body(world.who("issuer"), record, world.genesis, world.now),
                  Code.TX_VALIDATION_CODE_STATE_CONFLICT, "were already issued")
    assert world.coins("meter-1") == coins


@pytest.mark.parametrize("case, code, text", [
    ("by_meter_org", Code.TX_VALIDATION_CODE_NOT_AUTHORIZED, "only the initiating organisation"),
    ("by_plant_org", Code.TX_VALIDATION_CODE_NOT_AUTHORIZED, "only the initiating organisation"),
    ("by_gridops_admin", Code.TX_VALIDATION_CODE_NOT_AUTHORIZED, "not an issuer"),
    ("before_trade_end", Code.TX_VALIDATION_CODE_STATE_CONFLICT, "no trade end yet"),
    ("wrong_coins", Code.TX_VALIDATION_CODE_INVALID_BODY, "earns meter-1 40 coins"),
    ("certificate_by_other", Code.TX_VALIDATION_CODE_NOT_AUTHORIZED, "must be signed by"),
    ("tampered_certificate", Code.TX_VALIDATION_CODE_BAD_SIGNATURE, "does not verify"),
    ("certificate_mismatch", Code.TX_VALIDATION_CODE_INVALID_BODY, "does not match"),
])
def test_bad_coin_issues_are_refused(world: World, case: str, code: int, text: str) -> None:
    if case == "before_trade_end":
        _, _, cid = world.contract(energy=100)
    else:
        cid = world.fulfilled(energy=100)
    record = world.record(cid)
    issuer = world.who("issuer")
    signer = {"by_meter_org": "meter-2", "by_plant_org": "plant-1",
              "by_gridops_admin": "admin"}.get(case, "issuer")
    body = certificate.issue_body(world.who(signer), record, world.genesis, world.now)
    if case == "wrong_coins":
        body.coins += 1
    elif case == "certificate_by_other":
        body.certificate.CopyFrom(certificate.issue_body(world.who("admin"), record,
                                                         world.genesis, world.now).certificate)
    elif case == "tampered_certificate":
        cert = certificate.decode(body.certificate.payload)
        cert.delivered_wh += 1
        body.certificate.payload = cert.SerializeToString()
    elif case == "certificate_mismatch":
        cert = certificate.decode(body.certificate.payload)
        cert.pv_panel_id = "elsewhere"
        body.certificate.CopyFrom(issuer.sign_envelope(cert.SerializeToString()))
    world.refused(world.who(signer), "carbon_coin_issue", body, code, text)


def test_coins_pay_part_of_the_next_contract_and_never_go_negative(world: World) -> None:
    cid = world.fulfilled(energy=250)
    assert world.issue(cid)[0] == VALID
    assert world.coins("meter-1") == 100
    code, message, second = world.contract(energy=100, coins=60)
    assert code == VALID, message
    record = world.record(second)
    assert (record.coins_paid, record.amount_micro, record.money_due_micro) == (60, 10_000, 4_000)
    # The contract holds the coins (and the 4 000 µ due) until it ends.
    assert (world.coins("meter-1"), world.coins("plant-1")) == (40, 0)
    assert world.money("meter-1")[1] == 4_000
    account = energy_pb2.CarbonAccount.FromString(
        world.ledger.get_state(schema.carbon_key("meter-1")))  # type: ignore[arg-type]
    assert (account.received, account.spent) == (100, 60)
    # Finish it, then try to spend more coins than are left.
    world.deliver("meter-1", record.delivery_start, [100])
    assert world.submit(world.who("meter-1"), "trade_end",
                        energy_pb2.TradeEnd(contract_id=second, delivered_wh=100))[0] == VALID
    assert (world.coins("meter-1"), world.coins("plant-1")) == (40, 60)
    assert world.money("plant-1") == (25_000 + 4_000, 0) and world.money("meter-1")[1] == 0
    world.refused(world.who("meter-1"), "supply_contract",
                  energy_pb2.SupplyContract(plant_terms=world.terms(energy=100, coins=41)),
                  Code.TX_VALIDATION_CODE_STATE_CONFLICT, "has 40 carbon coins")


def test_certificate_verifies_offline_only_against_its_own_consortium(
        world: World, tmp_path: Path) -> None:
    cid = world.fulfilled(energy=100)
    assert world.issue(cid)[0] == VALID
    raw = world.ledger.get_state(schema.certificate_key(cid))
    envelope = envelope_pb2.SignedEnvelope.FromString(raw)  # type: ignore[arg-type]
    certificate.verify(envelope, world.genesis)
    other = create_consortium(tmp_path / "other", default_topology())
    with pytest.raises(certificate.CertificateInvalid, match="does not chain"):
        certificate.verify(envelope, Genesis.load(other))
    forged = envelope_pb2.SignedEnvelope()
    forged.CopyFrom(envelope)
    cert = certificate.decode(forged.payload)
    cert.avoided_grams = 10**6
    forged.payload = cert.SerializeToString()
    with pytest.raises(certificate.CertificateInvalid, match="does not verify"):
        certificate.verify(forged, world.genesis)
    by_admin = world.who("admin").sign_envelope(envelope.payload)
    with pytest.raises(certificate.CertificateInvalid, match="not an issuer"):
        certificate.verify(by_admin, world.genesis)


def test_energy_blocks_give_identical_state_on_two_ledgers(world: World,
                                                           energy_genesis: Genesis) -> None:
    genesis = energy_genesis
    cid = world.fulfilled(energy=100)
    assert world.issue(cid)[0] == VALID
    replica = Ledger(MemoryStore(), genesis, accept_proof)
    for number in range(world.ledger.height):
        found = world.ledger.get_block(number)
        assert found is not None
        assert replica.commit(found[0]).state_root == found[1].state_root
    assert list(replica.store.scan(b"")) == list(world.ledger.store.scan(b""))


# -- reliability from evidence ----------------------------------------------------------------

def test_plant_shortfalls_are_measured_from_its_own_live_readings(world: World) -> None:
    """Threshold 50 kW over 900 s is 12 500 Wh: below it is a shortfall interval, adjacent ones
    merge, a gap between readings is a shortfall, history never counts, and an announcement
    that declares nothing removes nothing."""
    assert (world.plant().live_readings, list(world.plant().measured_shortfall_windows)) == (0,
                                                                                              [])
    t = world.now // INTERVAL * INTERVAL + 2 * INTERVAL
    world.now = t
    world.ok("plant-1", "history_readings", settlement_pb2.HistoryReadings(readings=[
        settlement_pb2.MeterReadingEntry(interval_start=t - INTERVAL, produced_wh=0)]))
    for k, wh in [(0, 20_000), (1, 12_499), (2, 0), (3, 12_500), (6, 30_000)]:
        code, message = world.post("plant-1", t + k * INTERVAL, produced=wh)
        assert code == VALID, message
    plant = world.plant()
    windows = [(w.start, w.end) for w in plant.measured_shortfall_windows]
    assert windows == [(t + INTERVAL, t + 3 * INTERVAL), (t + 4 * INTERVAL, t + 6 * INTERVAL)]
    assert (plant.live_readings, plant.last_reading_end) == (5, t + 7 * INTERVAL)
    world.ok("plant-1", "plant_announcement", world.announce())
    assert [(w.start, w.end) for w in world.plant().measured_shortfall_windows] == windows
    world.refused("plant-1", "plant_announcement", world.announce(threshold_w=0),
                  Code.TX_VALIDATION_CODE_INVALID_BODY, "threshold_w must be positive")
