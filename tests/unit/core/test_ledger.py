"""Ledger commit: each validation code with a block that triggers it, atomicity, determinism."""

from __future__ import annotations

from pathlib import Path

import pytest
from ledger_helpers import ChainBuilder, endorsed, identity, past_interval, reading

from gridledger.common.v1 import block_pb2, envelope_pb2, transaction_pb2
from gridledger_core.consortium import create_consortium, default_topology
from gridledger_core.genesis import Genesis
from gridledger_core.ledger import schema
from gridledger_core.ledger.checks import check_for_ordering
from gridledger_core.ledger.errors import Code, TxInvalid
from gridledger_core.ledger.ledger import BlockRejected, Ledger
from gridledger_core.storage import LmdbStore, MemoryStore


def accept_consensus_proof(block: block_pb2.Block, header: block_pb2.BlockHeader,
                           previous: bytes | None) -> None:
    """The quorum certificate is the consensus core's job; these tests are about the rules."""


@pytest.fixture()
def ledger(genesis: Genesis) -> Ledger:
    return Ledger(MemoryStore(), genesis, accept_consensus_proof)


@pytest.fixture()
def chain() -> ChainBuilder:
    return ChainBuilder()


def commit_one(ledger: Ledger, chain: ChainBuilder, raw: bytes) -> tuple[int, str]:
    result = ledger.commit(chain.block([raw]))
    return result.codes[0], result.messages[0]


def test_valid_reading_is_committed(ledger: Ledger, chain: ChainBuilder,
                                    consortium_dir: Path) -> None:
    meter, endorser = identity(consortium_dir, "meter-1"), identity(consortium_dir, "endorser-1")
    start = past_interval()
    env = meter.new_transaction("meter_reading", reading("meter-1", start))
    result = ledger.commit(chain.block([endorsed(env, endorser)]))
    assert result.codes == [Code.TX_VALIDATION_CODE_VALID]
    stored = ledger.get_state(schema.reading_key("meter-1", start))
    assert stored is not None
    assert transaction_pb2.MeterReading.FromString(stored).produced_wh == 500
    assert ledger.height == 1
    location, code, _, tx = ledger.get_transaction(result.tx_ids[0])  # type: ignore[misc]
    assert (location.block_number, code) == (0, Code.TX_VALIDATION_CODE_VALID)
    assert tx.envelope.payload == env.payload


@pytest.mark.parametrize("case, expected", [
    ("bad_signature", Code.TX_VALIDATION_CODE_BAD_SIGNATURE),
    ("unknown_signer", Code.TX_VALIDATION_CODE_UNKNOWN_SIGNER),
    ("other_meter", Code.TX_VALIDATION_CODE_NOT_AUTHORIZED),
    ("endorser_reading", Code.TX_VALIDATION_CODE_NOT_AUTHORIZED),
    ("not_endorsed", Code.TX_VALIDATION_CODE_ENDORSEMENT_FAILURE),
    ("endorsed_by_meter", Code.TX_VALIDATION_CODE_ENDORSEMENT_FAILURE),
    ("malformed", Code.TX_VALIDATION_CODE_MALFORMED),
    ("bad_tx_id", Code.TX_VALIDATION_CODE_BAD_HEADER),
    ("misaligned", Code.TX_VALIDATION_CODE_INVALID_BODY),
    ("future_interval", Code.TX_VALIDATION_CODE_INVALID_BODY),
    ("too_much_energy", Code.TX_VALIDATION_CODE_INVALID_BODY),
])
def test_invalid_transaction_gets_its_code_and_changes_nothing(
        ledger: Ledger, chain: ChainBuilder, consortium_dir: Path,
        tmp_path: Path, case: str, expected: int) -> None:
    meter, endorser = identity(consortium_dir, "meter-1"), identity(consortium_dir, "endorser-1")
    start = past_interval()
    body = reading("meter-1", start)
    signer = meter
    if case == "other_meter":
        body = reading("meter-2", start)
    elif case == "endorser_reading":
        signer = identity(consortium_dir, "endorser-1")
        body = reading("endorser-1", start)
    elif case == "misaligned":
        body = reading("meter-1", start + 7)
    elif case == "future_interval":
        body = reading("meter-1", past_interval(-4))
    elif case == "too_much_energy":
        body = reading("meter-1", start, produced=10**9)
    elif case == "unknown_signer":
        create_consortium(tmp_path / "rogue", default_topology())
        signer = identity(tmp_path / "rogue", "meter-1")
    env = signer.new_transaction("meter_reading", body)
    if case == "bad_signature":
        env.signature = bytes(64)
    elif case == "bad_tx_id":
        tx = transaction_pb2.Transaction.FromString(env.payload)
        tx.header.tx_id = "00" * 32
        env = signer.sign_envelope(tx.SerializeToString())
    elif case == "malformed":
        env = signer.sign_envelope(b"\xff\xff\xff not a transaction")
    raw = endorsed(env, None if case == "not_endorsed" else
                   identity(consortium_dir, "meter-2") if case == "endorsed_by_meter" else endorser)
    before = list(ledger.store.scan(schema.STATE))
    code, message = commit_one(ledger, chain, raw)
    assert code == expected, message
    assert message
    assert list(ledger.store.scan(schema.STATE)) == before


def test_duplicate_tx_id_and_duplicate_interval(ledger: Ledger, chain: ChainBuilder,
                                                consortium_dir: Path) -> None:
    meter, endorser = identity(consortium_dir, "meter-1"), identity(consortium_dir, "endorser-1")
    start = past_interval()
    raw = endorsed(meter.new_transaction("meter_reading", reading("meter-1", start)), endorser)
    again = endorsed(meter.new_transaction("meter_reading", reading("meter-1", start, 1, 1)),
                     endorser)
    result = ledger.commit(chain.block([raw, raw, again]))
    assert result.codes == [Code.TX_VALIDATION_CODE_VALID, Code.TX_VALIDATION_CODE_DUPLICATE_TXID,
                            Code.TX_VALIDATION_CODE_STATE_CONFLICT]
    assert commit_one(ledger, chain, raw)[0] == Code.TX_VALIDATION_CODE_DUPLICATE_TXID
    # The index still points at the first, valid occurrence.
    found = ledger.get_transaction(result.tx_ids[0])
    assert found is not None and found[0].block_number == 0 and found[1] == 1


def test_block_out_of_chain_is_rejected_whole(ledger: Ledger, chain: ChainBuilder,
                                              consortium_dir: Path) -> None:
    meter, endorser = identity(consortium_dir, "meter-1"), identity(consortium_dir, "endorser-1")
    raw = endorsed(meter.new_transaction("meter_reading", reading("meter-1", past_interval())),
                   endorser)
    ledger.commit(chain.block([]))
    stray = ChainBuilder().block([raw])  # block 0 again, with a different previous hash
    with pytest.raises(BlockRejected, match="not the next block"):
        ledger.commit(stray)
    forged = chain.block([raw])
    forged.transactions.append(raw)  # data hash no longer matches
    with pytest.raises(BlockRejected, match="data hash"):
        ledger.commit(forged)
    assert ledger.height == 1


def test_two_ledgers_reach_identical_state(genesis: Genesis, consortium_dir: Path,
                                           tmp_path: Path) -> None:
    endorser = identity(consortium_dir, "endorser-1")
    meters = [identity(consortium_dir, f"meter-{i}") for i in (1, 2, 3)]
    chain = ChainBuilder()
    blocks = []
    for n in range(5):
        txs = [endorsed(m.new_transaction("meter_reading", reading(m.name, past_interval(n + 1),
                                                                     produced=n * 10)), endorser)
               for m in meters]
        blocks.append(chain.block(txs))
    a = Ledger(MemoryStore(), genesis, accept_consensus_proof)
    b = Ledger(LmdbStore(tmp_path / "db"), genesis, accept_consensus_proof)
    for block in blocks:
        ra, rb = a.commit(block), b.commit(block)
        assert ra.state_root == rb.state_root
    assert a.chain == b.chain
    assert list(a.store.scan(b"")) == list(b.store.scan(b""))
    b.store.close()


def test_state_root_differs_when_state_differs(genesis: Genesis, consortium_dir: Path) -> None:
    endorser = identity(consortium_dir, "endorser-1")
    meter = identity(consortium_dir, "meter-1")
    roots = []
    for produced in (1, 2):
        ledger = Ledger(MemoryStore(), genesis, accept_consensus_proof)
        env = meter.new_transaction("meter_reading", reading("meter-1", past_interval(),
                                                              produced=produced))
        roots.append(ledger.commit(ChainBuilder().block([endorsed(env, endorser)])).state_root)
    assert roots[0] != roots[1]


def test_reading_envelope_roundtrip_keeps_exact_bytes(consortium_dir: Path) -> None:
    meter = identity(consortium_dir, "meter-1")
    env = meter.new_transaction("meter_reading", reading("meter-1", past_interval()))
    again = envelope_pb2.SignedEnvelope.FromString(env.SerializeToString())
    assert again.payload == env.payload


def test_ordering_checks_endorsements_not_creators(genesis: Genesis,
                                                   consortium_dir: Path) -> None:
    meter, endorser = identity(consortium_dir, "meter-1"), identity(consortium_dir, "endorser-1")
    env = meter.new_transaction("meter_reading", reading("meter-1", past_interval()))
    tx_id = transaction_pb2.Transaction.FromString(env.payload).header.tx_id
    assert check_for_ordering(endorsed(env, endorser), genesis.membership) == tx_id
    for raw, code in [(endorsed(env, None), Code.TX_VALIDATION_CODE_ENDORSEMENT_FAILURE),
                      (endorsed(env, meter), Code.TX_VALIDATION_CODE_ENDORSEMENT_FAILURE),
                      (b"\xff\x01garbage", Code.TX_VALIDATION_CODE_MALFORMED)]:
        with pytest.raises(TxInvalid) as err:
            check_for_ordering(raw, genesis.membership)
        assert err.value.code == code
    # A creator signature broken after endorsement is the committers' catch, not ordering's.
    env.signature = bytes(64)
    assert check_for_ordering(endorsed(env, endorser), genesis.membership) == tx_id
