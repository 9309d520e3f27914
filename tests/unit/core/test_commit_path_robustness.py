"""No content stops a commit path (issue 13, item 1).

A hostile member holds its own CA, endorser and devices. Whatever it gets into a block — a
certificate whose subject is not UTF-8, integers that overflow the state's uint64 fields, a
transaction above the genesis size limit — every replica records the same validation code
and keeps committing. Blocks here are real final blocks signed with the consortium's orderer
keys, verified by the production verifier, written to LMDB."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hostile_certs import NON_UTF8, hostile_certificate, hostile_envelope
from ledger_helpers import endorsed, identity, past_interval, reading
from prometheus_client import REGISTRY
from signed_blocks import DeliverServer, Replicas, SignedChain, wait_for

from gridledger.common.v1 import energy_pb2, envelope_pb2, transaction_pb2
from gridledger_core.crypto import derive_tx_id
from gridledger_core.energy.terms import new_terms
from gridledger_core.genesis import Genesis
from gridledger_core.identity import UnknownSigner
from gridledger_core.ledger import schema, transitions
from gridledger_core.ledger.block_proof import block_verifier
from gridledger_core.ledger.checks import check_endorsed_transaction, check_for_ordering
from gridledger_core.ledger.errors import Code, TxInvalid
from gridledger_core.ledger.follower import BlockFollower
from gridledger_core.ledger.ledger import BlockRejected, Ledger
from gridledger_core.rpc.tls import TlsFiles
from gridledger_core.storage import LmdbStore, MemoryStore, WriteBatch

VALID = Code.TX_VALIDATION_CODE_VALID
UINT64_MAX = 2**64 - 1
HOSTILE_SUBJECTS = {"cn": {"cn": NON_UTF8}, "o": {"o": NON_UTF8},
                    "cn_and_o": {"cn": NON_UTF8, "o": NON_UTF8}}


@pytest.fixture()
def replicas(genesis: Genesis, consortium_dir: Path, tmp_path: Path) -> Iterator[Replicas]:
    r = Replicas(genesis, consortium_dir, tmp_path)
    yield r
    r.close()


# -- certificates whose subject does not parse ------------------------------------------------

def every_reading(genesis: Genesis, der: bytes) -> list[Callable[[], object]]:
    """Every way a node reads a certificate: the chain check alone (orderers, revocations,
    tools) and a signer's full check, at block time against the genesis accounts and against
    a ledger's state (committers, the endorser)."""
    ledger = Ledger(MemoryStore(), genesis, block_verifier(genesis))
    now = int(time.time())
    return [lambda: genesis.membership.certificate(der),
            lambda: genesis.membership.identify(der, now, None),
            lambda: ledger.signers(now).identify(der)]


@pytest.mark.parametrize("subject", sorted(HOSTILE_SUBJECTS))
def test_hostile_subject_is_an_unknown_signer(genesis: Genesis, consortium_dir: Path,
                                              subject: str) -> None:
    der, _ = hostile_certificate(consortium_dir, "community", "meter",
                                 **HOSTILE_SUBJECTS[subject])
    for read in every_reading(genesis, der):
        with pytest.raises(UnknownSigner, match="not valid DER"):
            read()


def test_a_certificate_with_an_unknown_version_is_an_unknown_signer(
        genesis: Genesis, consortium_dir: Path) -> None:
    """A version field other than v1/v3 raises cryptography's InvalidVersion, which is not a
    ValueError: it reached the checks' catch-all as MALFORMED "check failed: InvalidVersion"
    (found by the commit fuzz flipping one byte of a certificate)."""
    der = identity(consortium_dir, "meter-1").certificate
    version = der.find(bytes([0xA0, 0x03, 0x02, 0x01, 0x02]))  # [0] EXPLICIT INTEGER 2 (v3)
    assert version > 0
    forged = der[:version + 4] + bytes([7]) + der[version + 5:]
    for read in every_reading(genesis, forged):
        with pytest.raises(UnknownSigner, match=r"not valid DER \(InvalidVersion\)"):
            read()


@pytest.mark.parametrize("value", ["meter/1", "meter\x001", "meter\n1", "m" * 65])
def test_subject_values_that_could_break_keys_or_logs_are_refused(
        genesis: Genesis, consortium_dir: Path, value: str) -> None:
    der, _ = hostile_certificate(consortium_dir, "community", "meter", name=value)
    for read in every_reading(genesis, der):
        with pytest.raises(UnknownSigner, match="characters"):
            read()


@pytest.mark.parametrize("subject", sorted(HOSTILE_SUBJECTS))
def test_block_with_a_hostile_creator_commits_on_every_replica(
        replicas: Replicas, consortium_dir: Path, subject: str) -> None:
    """The reported poison: a CA-signed certificate with a non-UTF-8 CN (or O), endorsed with
    the real endorser key, in a final block. Every replica records UNKNOWN_SIGNER, commits
    the valid reading beside it and the next block."""
    endorser = identity(consortium_dir, "endorser-1")
    meter = identity(consortium_dir, "meter-1")
    der, key = hostile_certificate(consortium_dir, "community", "meter",
                                   **HOSTILE_SUBJECTS[subject])
    poison = hostile_envelope(der, key, "meter_reading", reading("mallory", past_interval()))
    good = meter.new_transaction("meter_reading", reading("meter-1", past_interval()))
    result = replicas.commit([endorsed(poison, endorser), endorsed(good, endorser)])
    assert result.codes == [Code.TX_VALIDATION_CODE_UNKNOWN_SIGNER, VALID]
    assert "not valid DER" in result.messages[0]
    later = meter.new_transaction("meter_reading", reading("meter-1", past_interval(2)))
    assert replicas.commit([endorsed(later, endorser)]).codes == [VALID]
    assert all(ledger.height == 2 for ledger in replicas.ledgers)
    replicas.check_replay()


def test_hostile_endorser_and_nested_signers_get_codes(replicas: Replicas,
                                                       consortium_dir: Path) -> None:
    """The same certificate as an endorser's, and as the signer of a plant's contract terms
    (a signed envelope inside the transaction)."""
    endorser, meter = identity(consortium_dir, "endorser-1"), identity(consortium_dir, "meter-1")
    bad_endorser_der, bad_endorser_key = hostile_certificate(
        consortium_dir, "gridops", "endorser", cn=NON_UTF8)
    env = meter.new_transaction("meter_reading", reading("meter-1", past_interval()))
    tx = envelope_pb2.EndorsedTransaction(envelope=env)
    endorsement = endorser.endorse(env)
    endorsement.endorser_certificate = bad_endorser_der
    endorsement.signature = bad_endorser_key.sign(b"anything")
    tx.endorsements.append(endorsement)
    plant_der, plant_key = hostile_certificate(consortium_dir, "solarco", "plant", o=NON_UTF8)
    terms = new_terms(meter="meter-1", plant="mallory", price_micro_per_kwh=100_000,
                      energy_wh=100, pv_panel_id="pv", plant_remaining_wh=100, coins_paid=0,
                      coin_value_micro=100, expires_at=int(time.time()) + 600,
                      deliver_by=int(time.time()) + 86400)
    payload = terms.SerializeToString()
    signed_terms = envelope_pb2.SignedEnvelope(payload=payload, signature=plant_key.sign(payload),
                                               signer_certificate=plant_der)
    contract = meter.new_transaction("supply_contract",
                                     energy_pb2.SupplyContract(plant_terms=signed_terms))
    result = replicas.commit([tx.SerializeToString(), endorsed(contract, endorser)])
    # An endorser certificate that does not identify an account is an unknown signer, as a
    # creator's is (identity.py); the nested terms' signer likewise.
    assert result.codes == [Code.TX_VALIDATION_CODE_UNKNOWN_SIGNER,
                            Code.TX_VALIDATION_CODE_UNKNOWN_SIGNER]
    assert result.messages[0].startswith("endorser unknown: certificate is not valid DER")
    assert result.messages[1].startswith("plant terms signer unknown: certificate is not valid "
                                         "DER")
    replicas.check_replay()


@pytest.mark.parametrize("subject", sorted(HOSTILE_SUBJECTS))
def test_orderers_refuse_a_hostile_creator(genesis: Genesis, consortium_dir: Path,
                                           subject: str) -> None:
    endorser = identity(consortium_dir, "endorser-1")
    der, key = hostile_certificate(consortium_dir, "community", "meter",
                                   **HOSTILE_SUBJECTS[subject])
    poison = hostile_envelope(der, key, "meter_reading", reading("mallory", past_interval()))
    with pytest.raises(TxInvalid) as err:
        check_for_ordering(endorsed(poison, endorser), genesis.membership)
    assert err.value.code == Code.TX_VALIDATION_CODE_UNKNOWN_SIGNER


def test_orderers_refuse_a_creator_other_than_the_header_names(genesis: Genesis,
                                                                consortium_dir: Path) -> None:
    endorser, meter = identity(consortium_dir, "endorser-1"), identity(consortium_dir, "meter-1")
    env = hostile_envelope(meter.certificate, meter.signer, "meter_reading",
                           reading("meter-1", past_interval()), creator="meter-2")
    with pytest.raises(TxInvalid) as err:
        check_for_ordering(endorsed(env, endorser), genesis.membership)
    assert err.value.code == Code.TX_VALIDATION_CODE_BAD_HEADER


# -- size -------------------------------------------------------------------------------------

def test_transaction_above_max_tx_bytes_is_malformed_unparsed(replicas: Replicas,
                                                              genesis: Genesis,
                                                              consortium_dir: Path) -> None:
    """A validly signed and endorsed reading made large by its nonce: committers refuse it by
    size alone (and so would an orderer given the limit)."""
    endorser, meter = identity(consortium_dir, "endorser-1"), identity(consortium_dir, "meter-1")
    limit = genesis.limits.max_tx_bytes
    nonce = b"n" * limit
    tx = transaction_pb2.Transaction(meter_reading=reading("meter-1", past_interval()))
    tx.header.tx_id = derive_tx_id(nonce, meter.certificate)
    tx.header.creator, tx.header.nonce = "meter-1", nonce
    tx.header.timestamp.FromNanoseconds(time.time_ns())
    big = endorsed(meter.sign_envelope(tx.SerializeToString()), endorser)
    garbage = b"\xff" * (limit + 1)
    result = replicas.commit([big, garbage])
    assert result.codes == [Code.TX_VALIDATION_CODE_MALFORMED] * 2
    assert result.messages == [f"transaction of {len(big)} bytes exceeds max_tx_bytes {limit}",
                               f"transaction of {limit + 1} bytes exceeds max_tx_bytes {limit}"]
    assert result.tx_ids == ["", ""]
    assert replicas.ledgers[0].get_state(
        schema.reading_key("meter-1", past_interval())) is None
    with pytest.raises(TxInvalid, match="exceeds max_tx_bytes"):
        check_for_ordering(big, genesis.membership, max_tx_bytes=limit)
    replicas.check_replay()


# -- integer ranges ---------------------------------------------------------------------------

def _announce(plant: str, remaining: int, contracted: int) -> energy_pb2.PlantAnnouncement:
    return energy_pb2.PlantAnnouncement(plant=plant, price_micro_per_kwh=1,
                                        threshold_w=1, remaining_wh=remaining,
                                        contracted_wh=contracted, pv_panel_ids=["pv"],
                                        coin_value_micro=1, endpoint="127.0.0.1:1")


def _contract(consortium_dir: Path, meter: str, energy: int,
              price: int = 0) -> envelope_pb2.SignedEnvelope:
    """Free by default: these meters hold no money, and a contract reserves what it costs."""
    plant = identity(consortium_dir, "plant-1")
    terms = new_terms(meter=meter, plant="plant-1", price_micro_per_kwh=price, energy_wh=energy,
                      pv_panel_id="pv", plant_remaining_wh=energy, coins_paid=0,
                      coin_value_micro=1, expires_at=int(time.time()) + 600,
                      deliver_by=int(time.time()) + 86400)
    signed = plant.sign_envelope(terms.SerializeToString())
    return identity(consortium_dir, meter).new_transaction(
        "supply_contract", energy_pb2.SupplyContract(plant_terms=signed))


def test_contracted_energy_beyond_uint64_is_a_state_conflict(replicas: Replicas,
                                                             consortium_dir: Path) -> None:
    """Two contracts that each fit the plant's remaining energy (re-announced in between),
    whose sum does not fit the record's uint64 `contracted_wh`: protobuf would raise
    ValueError on the assignment; the rule refuses it first."""
    endorser, plant = identity(consortium_dir, "endorser-1"), identity(consortium_dir, "plant-1")
    half = 2**63

    def submit(env: envelope_pb2.SignedEnvelope) -> tuple[int, str]:
        result = replicas.commit([endorsed(env, endorser)])
        return result.codes[0], result.messages[0]

    assert submit(plant.new_transaction("plant_announcement",
                                        _announce("plant-1", UINT64_MAX, 0)))[0] == VALID
    assert submit(_contract(consortium_dir, "meter-1", half))[0] == VALID
    assert submit(plant.new_transaction("plant_announcement",
                                        _announce("plant-1", UINT64_MAX, half)))[0] == VALID
    code, message = submit(_contract(consortium_dir, "meter-2", half))
    assert code == Code.TX_VALIDATION_CODE_STATE_CONFLICT
    assert "plant-1's contracted energy" in message and "uint64" in message
    replicas.check_replay()


def test_contract_amount_beyond_uint64_is_invalid(replicas: Replicas,
                                                  consortium_dir: Path) -> None:
    endorser, plant = identity(consortium_dir, "endorser-1"), identity(consortium_dir, "plant-1")
    announce = plant.new_transaction("plant_announcement", _announce("plant-1", UINT64_MAX, 0))
    contract = _contract(consortium_dir, "meter-1", UINT64_MAX, price=1_000_000)
    result = replicas.commit([endorsed(announce, endorser), endorsed(contract, endorser)])
    assert result.codes == [VALID, Code.TX_VALIDATION_CODE_INVALID_BODY]
    assert "amount" in result.messages[1]
    replicas.check_replay()


# -- the catch-all ----------------------------------------------------------------------------

def test_unexpected_exception_in_a_rule_is_a_deterministic_code_and_rolls_back(
        replicas: Replicas, consortium_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule with a bug (here: one that writes, then fails on a missing key) must not stop
    the block: its transaction gets INVALID_BODY "rule failed: KeyError" and its writes are
    rolled back, and the transaction after it is judged normally."""
    endorser = identity(consortium_dir, "endorser-1")
    real = transitions.TRANSITIONS["meter_reading"]

    def buggy(state: object, ctx: transitions.TxContext, body: object) -> None:
        if ctx.checked.creator.name == "meter-2":
            state.put("reading/meter-2/partial", b"x")  # type: ignore[attr-defined]
            raise KeyError("a bug")
        real(state, ctx, body)  # type: ignore[arg-type]

    monkeypatch.setitem(transitions.TRANSITIONS, "meter_reading", buggy)
    txs = [endorsed(identity(consortium_dir, m).new_transaction(
        "meter_reading", reading(m, past_interval())), endorser) for m in ("meter-2", "meter-1")]
    result = replicas.commit(txs)
    assert result.codes == [Code.TX_VALIDATION_CODE_INVALID_BODY, VALID]
    assert result.messages[0] == "rule failed: KeyError"
    assert replicas.ledgers[0].get_state("reading/meter-2/partial") is None


class FlakyDisk(MemoryStore):
    """A store whose writes fail with an OS error while `failing` is set (a full disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = threading.Event()

    def commit(self, batch: WriteBatch) -> None:
        if self.failing.is_set():
            raise OSError(28, "No space left on device")
        super().commit(batch)


def test_a_node_fault_is_not_turned_into_a_code(genesis: Genesis,
                                                consortium_dir: Path) -> None:
    """Storage failures are the node's, not the transaction's: the block is not written (so
    no replica records a verdict the others would not reach) and the error is raised."""
    store = FlakyDisk()
    ledger = Ledger(store, genesis, block_verifier(genesis))
    chain = SignedChain(genesis, consortium_dir)
    env = identity(consortium_dir, "meter-1").new_transaction(
        "meter_reading", reading("meter-1", past_interval()))
    block = chain.block([endorsed(env, identity(consortium_dir, "endorser-1"))])
    store.failing.set()
    with pytest.raises(OSError):
        ledger.commit(block)
    assert ledger.height == 0
    store.failing.clear()
    assert ledger.commit(block).codes == [VALID]


def test_a_proof_check_that_raises_is_a_rejected_block(genesis: Genesis,
                                                       consortium_dir: Path) -> None:
    """A verifier that fails on a block's bytes (here: a bug that raises ValueError) refuses
    the block, so the follower fails over to another orderer, rather than crashing."""
    def broken_verifier(*_: object) -> None:
        raise ValueError("unexpected bytes in the quorum certificate")

    ledger = Ledger(MemoryStore(), genesis, broken_verifier)
    block = SignedChain(genesis, consortium_dir).block([])
    with pytest.raises(BlockRejected, match=r"cannot be checked \(ValueError\)"):
        ledger.commit(block)
    assert ledger.height == 0


# -- the follower -----------------------------------------------------------------------------

def failures(reason: str) -> float:
    return REGISTRY.get_sample_value("gridledger_ledger_follower_failures_total",
                                     {"reason": reason}) or 0.0


@pytest.fixture()
def orderer(consortium_dir: Path) -> Iterator[DeliverServer]:
    server = DeliverServer(consortium_dir)
    yield server
    server.stop()


def test_follower_commits_past_a_poison_block(genesis: Genesis, consortium_dir: Path,
                                              tmp_path: Path, orderer: DeliverServer) -> None:
    """The reported incident end to end through the follower: before the fix its thread died
    on block 0 and the height froze there."""
    endorser, meter = identity(consortium_dir, "endorser-1"), identity(consortium_dir, "meter-1")
    chain = SignedChain(genesis, consortium_dir)
    der, key = hostile_certificate(consortium_dir, "community", "meter", cn=NON_UTF8)
    poison = hostile_envelope(der, key, "meter_reading", reading("mallory", past_interval()))
    orderer.append(chain.block([endorsed(poison, endorser)]))
    later = meter.new_transaction("meter_reading", reading("meter-1", past_interval()))
    orderer.append(chain.block([endorsed(later, endorser)]))
    store = LmdbStore(tmp_path / "ledger")
    ledger = Ledger(store, genesis, block_verifier(genesis))
    follower = BlockFollower(ledger, [("orderer-1", orderer.address)],
                             TlsFiles.for_node(consortium_dir, "committer-1"))
    follower.start()
    try:
        wait_for(lambda: ledger.height == 2, "both blocks to commit", timeout=30)
    finally:
        follower.stop()
        store.close()
    assert follower.healthy


def test_follower_reports_not_serving_and_retries_until_it_commits(
        genesis: Genesis, consortium_dir: Path, orderer: DeliverServer) -> None:
    """A commit that fails for a reason no content explains (here the disk) turns the node's
    health NOT_SERVING with the reason, is counted and logged, and is retried with backoff;
    the first block committed afterwards turns it SERVING again."""
    store = FlakyDisk()
    ledger = Ledger(store, genesis, block_verifier(genesis))
    chain = SignedChain(genesis, consortium_dir)
    env = identity(consortium_dir, "meter-1").new_transaction(
        "meter_reading", reading("meter-1", past_interval()))
    orderer.append(chain.block([endorsed(env, identity(consortium_dir, "endorser-1"))]))
    reports: list[tuple[bool, str]] = []
    follower = BlockFollower(ledger, [("orderer-1", orderer.address)],
                             TlsFiles.for_node(consortium_dir, "committer-1"),
                             on_health=lambda ok, why: reports.append((ok, why)))
    before = failures("commit_error")
    store.failing.set()
    follower.start()
    try:
        wait_for(lambda: failures("commit_error") >= before + 2, "two failed attempts")
        assert not follower.healthy and "OSError" in follower.problem
        assert reports[0][0] is False and "commit failed at height 0" in reports[0][1]
        assert len(reports) == 1  # reported once, not on every retry
        store.failing.clear()
        wait_for(lambda: ledger.height == 1, "the block to commit after the disk recovered")
        wait_for(lambda: follower.healthy, "the follower to report healthy")
    finally:
        follower.stop()
    assert [ok for ok, _ in reports] == [False, True]
    assert REGISTRY.get_sample_value("gridledger_ledger_follower_healthy") == 1


def test_follower_reports_not_serving_when_every_orderer_sends_a_refused_block(
        genesis: Genesis, consortium_dir: Path, orderer: DeliverServer) -> None:
    """One orderer (so a whole rotation) serving a block whose proposer signature is forged:
    the node cannot advance, says so, and recovers once a valid block is served."""
    chain = SignedChain(genesis, consortium_dir)
    env = identity(consortium_dir, "meter-1").new_transaction(
        "meter_reading", reading("meter-1", past_interval()))
    good = chain.block([endorsed(env, identity(consortium_dir, "endorser-1"))])
    forged = type(good)()
    forged.CopyFrom(good)
    forged.metadata.proposer_signature = bytes(64)
    orderer.append(forged)
    ledger = Ledger(MemoryStore(), genesis, block_verifier(genesis))
    reports: list[tuple[bool, str]] = []
    follower = BlockFollower(ledger, [("orderer-1", orderer.address)],
                             TlsFiles.for_node(consortium_dir, "committer-1"),
                             on_health=lambda ok, why: reports.append((ok, why)))
    follower.start()
    try:
        wait_for(lambda: not follower.healthy, "the follower to report the refused blocks")
        assert "refuses" in reports[0][1] and "bad proposer signature" in reports[0][1]
        orderer.blocks[0] = good  # the orderer is repaired
        wait_for(lambda: ledger.height == 1, "the valid block to commit")
        wait_for(lambda: follower.healthy, "the follower to report healthy")
    finally:
        follower.stop()
    assert [ok for ok, _ in reports] == [False, True]


def test_simulation_gives_the_verdict_a_committer_would(
        genesis: Genesis, consortium_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The endorser's simulation maps an unexpected exception in a rule exactly as commit."""
    def buggy(*_: object) -> None:
        raise OverflowError("a bug")

    monkeypatch.setitem(transitions.TRANSITIONS, "meter_reading", buggy)
    env = identity(consortium_dir, "meter-1").new_transaction(
        "meter_reading", reading("meter-1", past_interval()))
    ledger, now = Ledger(MemoryStore(), genesis, block_verifier(genesis)), int(time.time())
    checked = check_endorsed_transaction(endorsed(env, identity(consortium_dir, "endorser-1")),
                                         ledger.signers(now))
    with pytest.raises(TxInvalid) as err:
        ledger.simulate(checked, now)
    assert (err.value.code, err.value.message) == (Code.TX_VALIDATION_CODE_INVALID_BODY,
                                                   "rule failed: OverflowError")
