"""certificate.verify_block: what committers check on every block."""

from __future__ import annotations

import pytest
from consensus_harness import GENESIS_SEED, Cluster

from gridledger.common.v1 import block_pb2
from gridledger_core.consensus import lottery
from gridledger_core.consensus.certificate import Reason, verify_block
from gridledger_core.consensus.signing import GENESIS_PREVIOUS_HASH, Phase


@pytest.fixture(scope="module")
def final() -> tuple[Cluster, block_pb2.Block]:
    cluster = Cluster()
    cluster.submit("o1", [b"ok:cert:1", b"ok:cert:2"])
    cluster.advance(0.2)
    return cluster, cluster.nodes["o0"].blocks[0]


def check(cluster: Cluster, block: block_pb2.Block) -> Reason:
    return verify_block(
        block,
        GENESIS_PREVIOUS_HASH,
        GENESIS_SEED,
        cluster.crypto.public_keys,
        cluster.crypto.verify_sig,
        expected_number=0,
    ).reason


def copy(block: block_pb2.Block) -> block_pb2.Block:
    dup = block_pb2.Block()
    dup.CopyFrom(block)
    return dup


def test_final_block_verifies_and_yields_the_seed(final: tuple[Cluster, block_pb2.Block]) -> None:
    cluster, block = final
    verdict = verify_block(
        block,
        GENESIS_PREVIOUS_HASH,
        GENESIS_SEED,
        cluster.crypto.public_keys,
        cluster.crypto.verify_sig,
    )
    assert verdict.ok, verdict
    assert verdict.seed == cluster.nodes["o0"].seeds[0]
    assert len(block.metadata.commit_certificate.signatures) >= 3


def test_forged_cosignature(final: tuple[Cluster, block_pb2.Block]) -> None:
    cluster, block = final
    bad = copy(block)
    sig = bytearray(bad.metadata.commit_certificate.signatures[0].signature)
    sig[5] ^= 1
    bad.metadata.commit_certificate.signatures[0].signature = bytes(sig)
    assert check(cluster, bad) is Reason.FORGED_COSIGNATURE


def test_prepare_signature_is_not_a_commit_signature(
    final: tuple[Cluster, block_pb2.Block],
) -> None:
    cluster, block = final
    bad = copy(block)
    prepare = cluster.certificate(Phase.PREPARE, 0, block, ["o0", "o1", "o2"])
    del bad.metadata.commit_certificate.signatures[:]
    bad.metadata.commit_certificate.signatures.extend(prepare.signatures)
    assert check(cluster, bad) is Reason.FORGED_COSIGNATURE


def test_certificate_too_small(final: tuple[Cluster, block_pb2.Block]) -> None:
    cluster, block = final
    bad = copy(block)
    del bad.metadata.commit_certificate.signatures[2:]
    assert check(cluster, bad) is Reason.QC_TOO_SMALL


def test_duplicate_and_unknown_cosigners(final: tuple[Cluster, block_pb2.Block]) -> None:
    cluster, block = final
    dup = copy(block)
    sigs = dup.metadata.commit_certificate.signatures
    del sigs[2:]
    sigs.add().CopyFrom(sigs[0])
    assert check(cluster, dup) is Reason.DUPLICATE_COSIGNER
    unknown = copy(block)
    unknown.metadata.commit_certificate.signatures.add(orderer="mallory", signature=b"x" * 64)
    assert check(cluster, unknown) is Reason.UNKNOWN_COSIGNER


def test_wrong_vrf_proof(final: tuple[Cluster, block_pb2.Block]) -> None:
    cluster, block = final
    header = block_pb2.BlockHeader.FromString(block.header)
    # A valid proof by the same key, but for another height: not this block's lottery draw.
    header.vrf_proof = cluster.crypto.vrf_prover(header.proposer)(lottery.alpha(GENESIS_SEED, 9))
    bad = copy(block)
    bad.header = header.SerializeToString()
    assert check(cluster, bad) is Reason.BAD_VRF_PROOF


def test_primary_not_entitled(final: tuple[Cluster, block_pb2.Block]) -> None:
    cluster, block = final
    header = block_pb2.BlockHeader.FromString(block.header)
    other = next(o for o in cluster.ids if o != header.proposer)
    forged = cluster.pre_block(other, list(block.transactions), round_=header.round)
    forged.metadata.commit_certificate.CopyFrom(
        block_pb2.QuorumCertificate(
            round=0,
            signatures=cluster.certificate(Phase.COMMIT, 0, forged, cluster.ids).signatures,
        )
    )
    # Even with a full certificate: the lottery did not pick this proposer for round 0.
    assert check(cluster, forged) is Reason.PRIMARY_NOT_ENTITLED


def test_bad_proposer_signature(final: tuple[Cluster, block_pb2.Block]) -> None:
    cluster, block = final
    bad = copy(block)
    bad.metadata.proposer_signature = bytes(64)
    assert check(cluster, bad) is Reason.BAD_PROPOSER_SIGNATURE


def test_hash_chain_data_hash_and_height(final: tuple[Cluster, block_pb2.Block]) -> None:
    cluster, block = final
    verdict = verify_block(
        block, b"\x01" * 32, GENESIS_SEED, cluster.crypto.public_keys, cluster.crypto.verify_sig
    )
    assert verdict.reason is Reason.BAD_HASH_CHAIN
    extra = copy(block)
    extra.transactions.append(b"ok:smuggled")
    assert check(cluster, extra) is Reason.BAD_DATA_HASH
    wrong_height = verify_block(
        block,
        GENESIS_PREVIOUS_HASH,
        GENESIS_SEED,
        cluster.crypto.public_keys,
        cluster.crypto.verify_sig,
        expected_number=1,
    )
    assert wrong_height.reason is Reason.WRONG_HEIGHT
    garbage = copy(block)
    garbage.header = b"\xff\xff"
    assert check(cluster, garbage) is Reason.MALFORMED
