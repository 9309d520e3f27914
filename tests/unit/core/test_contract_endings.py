"""Supply contracts that end (issue 14 item 6): escrow at commit, delivery bounded by the
plant's own production, pro-rata ends by expiry or by both parties' cancel, coins held by the
contract, redemption with the treasury. Every refusal changes nothing; money is conserved
after every scenario."""

from __future__ import annotations

from pathlib import Path

import pytest
from energy_world import INTERVAL, REDEEM_VALUE, VALID, WINDOW, World, conserved, new_world

from gridledger.common.v1 import energy_pb2, settlement_pb2
from gridledger_core.energy.terms import CANCEL_FORMAT
from gridledger_core.genesis import Genesis
from gridledger_core.ledger import schema
from gridledger_core.ledger.errors import Code
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.storage import MemoryStore

CONFLICT = Code.TX_VALIDATION_CODE_STATE_CONFLICT
INVALID = Code.TX_VALIDATION_CODE_INVALID_BODY
DENIED = Code.TX_VALIDATION_CODE_NOT_AUTHORIZED
ENDED = energy_pb2.CONTRACT_STATUS_ENDED


@pytest.fixture()
def world(energy_genesis: Genesis, energy_dir: Path) -> World:
    return new_world(energy_genesis, energy_dir)


def close(cid: str) -> settlement_pb2.CloseContract:
    return settlement_pb2.CloseContract(contract_id=cid)


def test_commit_reserves_the_money_due_and_refuses_a_meter_without_it(world: World) -> None:
    cid = world.open_contract(energy=400)  # 400 Wh at 0.1/kWh = 40 000 µ
    assert world.money("meter-1") == (1_000_000 - 40_000, 40_000)
    assert world.record(cid).reserved_micro == 40_000
    world.refused("meter-3", "supply_contract",
                  energy_pb2.SupplyContract(plant_terms=world.terms(meter="meter-3")), CONFLICT,
                  "insufficient_funds: meter-3 has 0 µ available")
    conserved(world)


@pytest.mark.parametrize("deliver_in, text", [
    (7 * 86400 + 1, "at most 604800 s"),  # beyond genesis settlement.max_contract_seconds
    (0, "at least one interval"),
    (-100, "at least one interval"),
])
def test_deliver_by_must_be_after_the_commit_and_within_the_longest_contract(
        world: World, deliver_in: int, text: str) -> None:
    world.refused("meter-1", "supply_contract",
                  energy_pb2.SupplyContract(plant_terms=world.terms(deliver_in=deliver_in)),
                  INVALID, text)


def test_delivery_claimed_without_plant_production_earns_nothing(world: World) -> None:
    """The meter reports consumption; the plant's own readings show no production (0 Wh in
    one interval, no reading in the other): nothing is delivered, the trade cannot end as
    fulfilled, and closing it pays nothing and mints no coin."""
    cid = world.open_contract(energy=100, deliver_in=3 * 3600)
    start = world.record(cid).delivery_start
    world.deliver("meter-1", start, [100], produced=[0])
    world.deliver("meter-1", start + INTERVAL, [100], plant=None)
    assert world.record(cid).attributed_wh == 0
    world.refused("meter-1", "trade_end", energy_pb2.TradeEnd(contract_id=cid, delivered_wh=100),
                  CONFLICT, "is not fulfilled: 0 of 100 Wh delivered")
    world.now = world.record(cid).deliver_by + WINDOW + 1
    world.ok("meter-1", "close_contract", close(cid))
    record = world.record(cid)
    assert (record.status, record.end_reason, record.delivered_wh, record.paid_micro,
            record.released_micro) == (ENDED, "expired", 0, 0, 10_000)
    assert world.money("meter-1") == (1_000_000, 0) and world.money("plant-1") == (0, 0)
    code, message, _ = world.issue(cid)
    assert (code, "earns no coin" in message) == (CONFLICT, True), message
    assert world.coins("meter-1") == 0
    conserved(world)


@pytest.mark.parametrize("plant_first", [True, False])
def test_one_intervals_production_is_shared_first_come_first_served(world: World,
                                                                  plant_first: bool) -> None:
    """Two meters consume 80 Wh each in an interval in which the plant produced 100 Wh.
    Production goes to contracts in the order their pair of readings completes: if the plant
    posted first, the meter that posts next (meter-2) gets 80; if the plant posts last, its
    reading completes both pairs and the first committed contract (meter-1's) gets 80. Never
    more than the 100 Wh produced."""
    first = world.open_contract("meter-1", energy=500)
    world.now += 1
    second = world.open_contract("meter-2", energy=500)
    start = max(world.record(first).delivery_start, world.record(second).delivery_start)
    if plant_first:
        assert world.post("plant-1", start, produced=100)[0] == VALID
    for meter in ("meter-2", "meter-1"):  # the later contract's meter posts first
        assert world.post(meter, start, consumed=80)[0] == VALID
    if not plant_first:
        assert world.post("plant-1", start, produced=100)[0] == VALID
    got = (world.record(first).attributed_wh, world.record(second).attributed_wh)
    assert got == ((20, 80) if plant_first else (80, 20))
    attributed = world.ledger.get_state(schema.plant_attributed_key("plant-1", start))
    assert attributed is not None and int.from_bytes(attributed, "big") == 100


def test_stalled_contract_closed_after_its_deadline_frees_the_meter_and_the_plant(
        world: World) -> None:
    cid = world.open_contract(energy=100, deliver_in=2 * 3600)
    record = world.record(cid)
    world.deliver("meter-1", record.delivery_start, [40])
    assert world.plant().open_contracts == 1 and world.plant().remaining_wh == 9_900
    closable = record.deliver_by + WINDOW
    world.now = closable
    world.refused("settler", "close_contract", close(cid), CONFLICT,
                  f"can be closed after {closable}")
    world.now = closable + 1
    for stranger in ("meter-2", "plant-2", "issuer"):
        world.refused(stranger, "close_contract", close(cid), DENIED, "neither party")
    tx_id = world.ok("settler", "close_contract", close(cid))
    record = world.record(cid)
    assert (record.status, record.end_reason, record.delivered_wh, record.undelivered_wh,
            record.paid_micro, record.released_micro, record.ended_by,
            record.trade_end_tx_id) == (ENDED, "expired", 40, 60, 4_000, 6_000, "settler", tx_id)
    plant = world.plant()
    assert (plant.remaining_wh, plant.open_contracts, plant.delivered_wh) == (9_960, 0, 40)
    assert world.money("meter-1") == (996_000, 0) and world.money("plant-1") == (4_000, 0)
    assert world.ledger.get_state(schema.open_contract_key("meter-1")) is None
    world.refused("meter-1", "close_contract", close(cid), CONFLICT, "already ended (expired)")
    # Coins on what was delivered only; and the meter may buy again.
    code, message, _ = world.issue(cid)
    assert code == VALID, message
    assert world.coins("meter-1") == 40 * world.genesis.carbon_grams_per_kwh // 1000
    world.open_contract(energy=100)
    conserved(world)


@pytest.mark.parametrize("closer", ["meter-1", "plant-1"])
def test_either_party_may_close_after_the_deadline(world: World, closer: str) -> None:
    cid = world.open_contract(energy=100, deliver_in=3600)
    world.now = world.record(cid).deliver_by + WINDOW + 1
    world.ok(closer, "close_contract", close(cid))
    assert world.record(cid).ended_by == closer


@pytest.mark.parametrize("case, code, text", [
    ("no_consent", Code.TX_VALIDATION_CODE_UNKNOWN_SIGNER, "cancel consent signer unknown"),
    ("own_consent", DENIED, "signed by the other party plant-1, not meter-1"),
    ("stranger_consent", DENIED, "signed by the other party plant-1, not plant-2"),
    ("other_contract", INVALID, "the consent is for contract"),
    ("expired", INVALID, "the consent expired"),
    ("bad_format", Code.TX_VALIDATION_CODE_MALFORMED, "cancel consent format"),
    ("tampered", Code.TX_VALIDATION_CODE_BAD_SIGNATURE, "does not verify"),
    ("by_stranger", DENIED, "only contract"),
])
def test_cancel_without_the_other_partys_consent_is_refused(world: World, case: str, code: int,
                                                            text: str) -> None:
    cid = world.open_contract(energy=100)
    signer, consent = "meter-1", world.consent("plant-1", cid)
    if case == "no_consent":
        consent = type(consent)()
    elif case == "own_consent":
        consent = world.consent("meter-1", cid)
    elif case == "stranger_consent":
        consent = world.consent("plant-2", cid)
    elif case == "other_contract":
        consent = world.consent("plant-1", "00" * 32)
    elif case == "expired":
        consent = world.consent("plant-1", cid, expires_in=-1)
    elif case == "bad_format":
        consent = world.consent("plant-1", cid, fmt=CANCEL_FORMAT + "x")
    elif case == "tampered":
        consent.payload = consent.payload.replace(cid.encode(), ("00" * 32).encode())
    elif case == "by_stranger":
        signer = "meter-2"
    world.refused(signer, "cancel_contract",
                  settlement_pb2.CancelContract(contract_id=cid, consent=consent), code, text)


@pytest.mark.parametrize("canceller, consenter", [("meter-1", "plant-1"),
                                                  ("plant-1", "meter-1")])
def test_cancel_by_both_parties_ends_pro_rata_and_returns_unused_coins(
        world: World, canceller: str, consenter: str) -> None:
    earned = world.fulfilled(energy=250)  # 25 000 µ to plant-1; 100 coins to meter-1
    assert world.issue(earned)[0] == VALID
    cid = world.open_contract(energy=100, coins=60)  # 10 000 µ: 6 000 in coins, 4 000 money
    assert world.coins("meter-1") == 40 and world.money("meter-1")[1] == 4_000
    world.deliver("meter-1", world.record(cid).delivery_start, [30])  # worth 3 000 µ
    world.ok(canceller, "cancel_contract", settlement_pb2.CancelContract(
        contract_id=cid, consent=world.consent(consenter, cid)))
    record = world.record(cid)
    # Coins count first: 30 coins pay the 3 000 µ, 30 come back, no money is paid.
    assert (record.end_reason, record.delivered_wh, record.coins_to_plant,
            record.coins_returned, record.paid_micro, record.released_micro) == (
        "cancelled", 30, 30, 30, 0, 4_000)
    assert (world.coins("meter-1"), world.coins("plant-1")) == (70, 30)
    carbon = world.carbon("meter-1")
    assert (carbon.received, carbon.spent) == (100, 30)
    assert world.money("meter-1") == (1_000_000 - 25_000, 0)
    assert world.plant().remaining_wh == 10_000 - 250 - 30
    conserved(world)


def test_holders_redeem_coins_with_the_treasury(world: World) -> None:
    cid = world.fulfilled(energy=6_000)  # 600 000 µ; 2 400 coins to meter-1
    assert world.issue(cid)[0] == VALID
    assert world.coins("meter-1") == 2_400
    world.refused("meter-1", "redeem_coins", settlement_pb2.RedeemCoins(coins=2_001), CONFLICT,
                  "insufficient_funds: treasury has 100000 µ available")
    world.refused("meter-1", "redeem_coins", settlement_pb2.RedeemCoins(coins=2_401), CONFLICT,
                  "has 2400 carbon coins, cannot redeem 2401")
    world.refused("meter-1", "redeem_coins", settlement_pb2.RedeemCoins(coins=0), INVALID,
                  "at least one coin")
    world.ok("meter-1", "redeem_coins", settlement_pb2.RedeemCoins(coins=2_000))
    assert world.money("treasury") == (0, 0)
    assert world.money("meter-1") == (1_000_000 - 600_000 + 2_000 * REDEEM_VALUE, 0)
    carbon = world.carbon("meter-1")
    assert (carbon.coins, carbon.spent, carbon.redeemed) == (400, 2_000, 2_000)
    conserved(world)


def test_redemption_closed_when_genesis_sets_no_value(genesis: Genesis,
                                                      consortium_dir: Path) -> None:
    w = new_world(genesis, consortium_dir)  # the devnet genesis: redemption value 0
    w.refused("plant-1", "redeem_coins", settlement_pb2.RedeemCoins(coins=1), CONFLICT,
              "redemption closed")


def test_contract_lifecycles_give_identical_state_on_a_replica(world: World,
                                                               energy_genesis: Genesis) -> None:
    earned = world.fulfilled(energy=250)
    assert world.issue(earned)[0] == VALID
    cid = world.open_contract(energy=100, coins=50, deliver_in=3600)
    world.deliver("meter-1", world.record(cid).delivery_start, [70], produced=[50])
    world.now = world.record(cid).deliver_by + WINDOW + 1
    world.ok("plant-1", "close_contract", close(cid))
    world.ok("plant-1", "redeem_coins", settlement_pb2.RedeemCoins(coins=5))
    replica = Ledger(MemoryStore(), energy_genesis, lambda *_: None)
    for number in range(world.ledger.height):
        found = world.ledger.get_block(number)
        assert found is not None
        assert replica.commit(found[0]).state_root == found[1].state_root
    assert list(replica.store.scan(b"")) == list(world.ledger.store.scan(b""))
    conserved(world)
