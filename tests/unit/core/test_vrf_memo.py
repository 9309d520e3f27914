"""The process's VRF memo (issue 15): a block's ECVRF proof is computed once per process, however
many ledgers, audits and checks in that process look at the block; refusals are remembered
as refusals; the memo is bounded.

The count is of ``_encode_to_curve_tai``, the step every ECVRF verification (and every proof)
takes once, so these tests count real verifications with or without a memo in front."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from ledger_helpers import endorsed, identity, past_interval, reading
from signed_blocks import SignedChain

from gridledger.common.v1 import block_pb2
from gridledger_core.consensus import certificate, lottery, vrf
from gridledger_core.genesis import Genesis
from gridledger_core.ledger import block_proof
from gridledger_core.ledger.audit import verify_ledger
from gridledger_core.ledger.block_proof import block_verifier
from gridledger_core.ledger.errors import Code
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.lru import Lru
from gridledger_core.storage import MemoryStore

VALID = Code.TX_VALIDATION_CODE_VALID


@pytest.fixture()
def curve_hashes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[bytes]]:
    """alpha -> how many times an ECVRF hash-to-curve ran for it, starting from an empty memo."""
    seen: Counter[bytes] = Counter()
    real = vrf._encode_to_curve_tai

    def counting(salt: bytes, alpha: bytes) -> bytes:
        seen[alpha] += 1
        return real(salt, alpha)

    vrf.clear_memo()
    monkeypatch.setattr(vrf, "_encode_to_curve_tai", counting)
    yield seen
    vrf.clear_memo()


def test_three_replicas_and_an_audit_verify_each_block_proof_once(
        genesis: Genesis, consortium_dir: Path, curve_hashes: Counter[bytes]) -> None:
    """Two committers and an endorser replica in one process commit the same four blocks,
    then the chain is audited by a fresh replay: every proof is verified exactly once."""
    chain = SignedChain(genesis, consortium_dir)
    stores = [MemoryStore() for _ in range(3)]
    ledgers = [Ledger(store, genesis, block_verifier(genesis)) for store in stores]
    meter, endorser = identity(consortium_dir, "meter-1"), identity(consortium_dir, "endorser-1")
    alphas = []
    for n in range(4):
        alphas.append(lottery.alpha(chain.previous_seed, chain.number))
        tx = endorsed(meter.new_transaction("meter_reading", reading("meter-1",
                                                                     past_interval(n + 1))),
                      endorser)
        block = chain.block([tx])
        curve_hashes.clear()  # the proof made just now is not a verification
        for ledger in ledgers:
            result = ledger.commit(block)
            assert result.codes == [VALID], result.messages
        assert curve_hashes == Counter({alphas[-1]: 1})
    curve_hashes.clear()
    report = verify_ledger(stores[0], genesis)
    assert report.ok, report.problem
    assert curve_hashes == Counter(), "the audit's replay verified proofs it had seen"


def test_a_refused_proof_is_remembered_as_refused(genesis: Genesis, consortium_dir: Path,
                                                 curve_hashes: Counter[bytes]) -> None:
    chain = SignedChain(genesis, consortium_dir)
    previous_seed = chain.previous_seed
    block = chain.block([])
    header = block_pb2.BlockHeader.FromString(block.header)
    key = genesis.orderer_keys[header.proposer]
    alpha = lottery.alpha(previous_seed, 0)
    forged = bytearray(header.vrf_proof)
    forged[40] ^= 1  # inside c: still well-formed, so the full verification runs
    curve_hashes.clear()
    for _ in range(3):
        assert vrf.verify(key, bytes(forged), alpha) is None
        assert vrf.verify(key, header.vrf_proof, alpha + b"\x00") is None
    assert sum(curve_hashes.values()) == 2
    # The genuine proof still verifies (its own entry), and the forged one still fails.
    assert vrf.verify(key, header.vrf_proof, alpha) == vrf.verify_uncached(
        key, header.vrf_proof, alpha) is not None
    assert vrf.verify(key, bytes(forged), alpha) is None
    assert vrf.verify_uncached(key, bytes(forged), alpha) is None


def test_the_certificate_check_and_the_seed_lookup_share_the_memo(
        genesis: Genesis, consortium_dir: Path, curve_hashes: Counter[bytes]) -> None:
    """The consensus certificate check, the lottery's header check and the committer's seed
    lookup of the next block all answer from the one verification."""
    chain = SignedChain(genesis, consortium_dir)
    previous_hash, previous_seed = chain.previous_hash, chain.previous_seed
    block = chain.block([])
    header = block_pb2.BlockHeader.FromString(block.header)
    curve_hashes.clear()
    verdicts = [certificate.verify_block(block, previous_hash, previous_seed,
                                         genesis.orderer_keys,
                                         certificate.ed25519_verifier(genesis.orderer_keys))
                for _ in range(3)]
    assert all(v.ok for v in verdicts)
    assert lottery.verify_header_vrf(header, genesis.orderer_keys[header.proposer],
                                     previous_seed) == verdicts[0].seed
    assert block_proof.previous_seed(genesis, block.header) == verdicts[0].seed
    assert sum(curve_hashes.values()) == 1


def test_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch,
                             curve_hashes: Counter[bytes]) -> None:
    small: Lru[bytes, bytes | None] = Lru(4)
    monkeypatch.setattr(vrf, "_VERIFIED", small)
    seed = bytes(range(32))
    pk = vrf.public_key(seed)
    proofs = {i: vrf.prove(seed, b"a%d" % i) for i in range(10)}
    curve_hashes.clear()
    for i in range(10):
        assert vrf.verify(pk, proofs[i], b"a%d" % i) is not None
    assert len(small) == 4
    assert sum(curve_hashes.values()) == 10
    vrf.verify(pk, proofs[9], b"a9")  # recent: still there
    assert sum(curve_hashes.values()) == 10
    assert vrf.verify(pk, proofs[0], b"a0") is not None  # evicted: verified again, same answer
    assert sum(curve_hashes.values()) == 11
    assert len(small) == 4
