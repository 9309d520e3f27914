"""The ledger's check of the ordering proof of a block, through the consensus core's
certificate verification: lottery-entitled primary, VRF proof, proposer signature and a
quorum certificate of distinct orderer co-signatures, against the genesis orderer set."""

from __future__ import annotations

from gridledger.common.v1 import block_pb2
from gridledger_core.consensus import lottery, vrf
from gridledger_core.consensus.certificate import ed25519_verifier, verify_block
from gridledger_core.consensus.signing import GENESIS_PREVIOUS_HASH, block_hash
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.ledger import BlockRejected, BlockVerifier


def previous_seed(genesis: Genesis, previous_header_bytes: bytes | None) -> bytes:
    """The seed the lottery of the next block is drawn from (committed headers are trusted)."""
    if previous_header_bytes is None:
        return lottery.genesis_seed(genesis.hash)
    header = block_pb2.BlockHeader.FromString(previous_header_bytes)
    seed = vrf.proof_to_hash(header.vrf_proof)
    if seed is None:
        raise BlockRejected(f"committed block {header.number} carries an invalid VRF proof")
    return seed


def block_verifier(genesis: Genesis) -> BlockVerifier:
    orderers = genesis.orderer_keys
    verify_sig = ed25519_verifier(orderers)

    def verify(block: block_pb2.Block, header: block_pb2.BlockHeader,
               previous_header_bytes: bytes | None) -> None:
        previous_hash = (block_hash(previous_header_bytes) if previous_header_bytes is not None
                         else GENESIS_PREVIOUS_HASH)
        verdict = verify_block(block, previous_hash, previous_seed(genesis, previous_header_bytes),
                               orderers, verify_sig, expected_number=header.number)
        if not verdict.ok:
            detail = f" ({verdict.detail})" if verdict.detail else ""
            raise BlockRejected(f"block {header.number}: {verdict.reason.value}{detail}")

    return verify
