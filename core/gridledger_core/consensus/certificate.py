"""Verification of ordered blocks: the single check shared by orderers and committers.

Committers call ``verify_block`` on every block they receive, with the previous block's
header hash and seed (for the first block: ``signing.GENESIS_PREVIOUS_HASH`` and
``lottery.genesis_seed(config_hash)``) and the orderer set from the genesis configuration.
On success the verdict carries the block's seed, which the committer must keep to verify the
next block. Orderers use the same functions on pre-blocks and on vote certificates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from google.protobuf.message import DecodeError

from gridledger.common.v1 import block_pb2
from gridledger_core.consensus import lottery, vrf
from gridledger_core.consensus.quorum import Quorum
from gridledger_core.consensus.signing import Phase, block_hash, data_hash, signing_bytes
from gridledger_core.crypto import verify_signature

VerifySig = Callable[[str, bytes, bytes], bool]  # (orderer id, signed bytes, signature)


class Reason(StrEnum):
    OK = "ok"
    MALFORMED = "malformed"
    WRONG_HEIGHT = "wrong height"
    BAD_HASH_CHAIN = "bad hash chain"
    BAD_DATA_HASH = "bad data hash"
    PRIMARY_NOT_ENTITLED = "primary not entitled"
    BAD_VRF_PROOF = "bad vrf proof"
    BAD_PROPOSER_SIGNATURE = "bad proposer signature"
    BAD_CERTIFICATE_ROUND = "certificate round before proposal round"
    UNKNOWN_COSIGNER = "unknown co-signer"
    DUPLICATE_COSIGNER = "duplicate co-signer"
    FORGED_COSIGNATURE = "forged co-signature"
    QC_TOO_SMALL = "quorum certificate too small"


@dataclass(frozen=True)
class Verdict:
    reason: Reason
    detail: str = ""
    # Set when the pre-block checks passed: the parsed header and the block's seed.
    header: block_pb2.BlockHeader | None = None
    seed: bytes = b""

    @property
    def ok(self) -> bool:
        return self.reason is Reason.OK

    def __bool__(self) -> bool:
        return self.ok


def ed25519_verifier(orderers: Mapping[str, bytes]) -> VerifySig:
    """A ``verify_sig`` over the orderers' Ed25519 public keys (the one verifier in crypto)."""

    def verify_sig(orderer: str, message: bytes, signature: bytes) -> bool:
        key = orderers.get(orderer)
        return key is not None and verify_signature(key, signature, message)

    return verify_sig


def check_signatures(
    signatures: Sequence[block_pb2.CoSignature],
    signed: bytes,
    orderers: Mapping[str, bytes],
    verify_sig: VerifySig,
) -> Verdict:
    """q distinct known orderers, each with a valid signature over ``signed``."""
    seen: set[str] = set()
    for cosig in signatures:
        if cosig.orderer not in orderers:
            return Verdict(Reason.UNKNOWN_COSIGNER, cosig.orderer)
        if cosig.orderer in seen:
            return Verdict(Reason.DUPLICATE_COSIGNER, cosig.orderer)
        if not verify_sig(cosig.orderer, signed, cosig.signature):
            return Verdict(Reason.FORGED_COSIGNATURE, cosig.orderer)
        seen.add(cosig.orderer)
    need = Quorum(len(orderers)).q
    if len(seen) < need:
        return Verdict(Reason.QC_TOO_SMALL, f"{len(seen)} of {need} signatures")
    return Verdict(Reason.OK)


def check_pre_block(
    block: block_pb2.Block,
    previous_header_hash: bytes,
    previous_seed: bytes,
    orderers: Mapping[str, bytes],
    verify_sig: VerifySig,
    *,
    expected_number: int | None = None,
    vrf_verify: lottery.VrfVerify = vrf.verify,
) -> Verdict:
    """Everything about a block except its commit certificate."""
    header = block_pb2.BlockHeader()
    try:
        header.ParseFromString(block.header)
    except DecodeError:
        return Verdict(Reason.MALFORMED, "header does not parse")
    if expected_number is not None and header.number != expected_number:
        return Verdict(Reason.WRONG_HEIGHT, f"{header.number} != {expected_number}")
    if header.previous_hash != previous_header_hash:
        return Verdict(Reason.BAD_HASH_CHAIN)
    if header.data_hash != data_hash(block.transactions):
        return Verdict(Reason.BAD_DATA_HASH)
    proposer_key = orderers.get(header.proposer)
    if proposer_key is None or not lottery.is_entitled(
        header.proposer, orderers, previous_seed, header.number, header.round
    ):
        return Verdict(Reason.PRIMARY_NOT_ENTITLED, f"{header.proposer!r} at round {header.round}")
    seed = lottery.verify_header_vrf(header, proposer_key, previous_seed, vrf_verify)
    if seed is None:
        return Verdict(Reason.BAD_VRF_PROOF, header.proposer)
    signed = signing_bytes(Phase.PROPOSAL, header.number, header.round, block_hash(block.header))
    if not verify_sig(header.proposer, signed, block.metadata.proposer_signature):
        return Verdict(Reason.BAD_PROPOSER_SIGNATURE, header.proposer)
    return Verdict(Reason.OK, header=header, seed=seed)


def verify_block(
    block: block_pb2.Block,
    previous_header_hash: bytes,
    previous_seed: bytes,
    orderers: Mapping[str, bytes],
    verify_sig: VerifySig,
    *,
    expected_number: int | None = None,
    vrf_verify: lottery.VrfVerify = vrf.verify,
) -> Verdict:
    """Check a final block; ``verdict.ok`` and ``verdict.seed`` on success.

    block: the final Block (header bytes, transactions, metadata with proposer signature and
        commit certificate).
    previous_header_hash: SHA-256 of the previous block's header bytes.
    previous_seed: the previous block's seed (its VRF output), or the genesis seed.
    orderers: orderer id -> 32-byte Ed25519 public key (also its VRF key), from genesis.
    verify_sig: (orderer id, message, signature) -> bool; ``ed25519_verifier(orderers)``
        is the production choice.
    expected_number: the height the caller expects, when it wants that checked too.
    vrf_verify: ECVRF verification; replaceable only for simulations.
    """
    verdict = check_pre_block(
        block,
        previous_header_hash,
        previous_seed,
        orderers,
        verify_sig,
        expected_number=expected_number,
        vrf_verify=vrf_verify,
    )
    if not verdict.ok or verdict.header is None:
        return verdict
    qc = block.metadata.commit_certificate
    if qc.round < verdict.header.round:
        return Verdict(Reason.BAD_CERTIFICATE_ROUND, f"{qc.round} < {verdict.header.round}")
    signed = signing_bytes(Phase.COMMIT, verdict.header.number, qc.round, block_hash(block.header))
    sig_verdict = check_signatures(qc.signatures, signed, orderers, verify_sig)
    if not sig_verdict.ok:
        return sig_verdict
    return verdict
