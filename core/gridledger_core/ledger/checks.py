"""Checks every transaction must pass before its body's rules are even looked at: decoding,
the creator's certificate chain and signature over the exact payload bytes, the header, and
the endorsements. Endorsers run them on admission; committers run them again at commit.

Every signer is identified through a `Signers` (identity.py): its certificate must be valid at
the block's time (the endorser: its clock) and speak for an account of the organisation that
issued it, in that account's role, and not be revoked in the state being judged.

Creator and endorsement signatures go through the process's cache of verified signatures
(sigcache.py): an endorsement batch's one signature is verified once per process, not once per
transaction, and an endorser's replica does not re-verify what its submit path verified."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from gridledger.common.v1 import envelope_pb2, transaction_pb2
from gridledger_core import merkle
from gridledger_core.crypto import (
    derive_tx_id,
    endorsement_batch_message,
    endorsement_message,
)
from gridledger_core.identity import Identity, Membership, Role, Signers, UnknownSigner
from gridledger_core.ledger.errors import Code, TxInvalid
from gridledger_core.sigcache import verify_cached

MIN_NONCE_BYTES = 16


@dataclass(frozen=True)
class CheckedTransaction:
    """A transaction whose creator and signature are verified; `body` names its type."""

    tx: transaction_pb2.Transaction
    tx_id: str
    creator: Identity
    body: str
    payload: bytes


def check_envelope(envelope: envelope_pb2.SignedEnvelope, signers: Signers) -> CheckedTransaction:
    try:
        creator = signers.identify(envelope.signer_certificate)
    except UnknownSigner as exc:
        raise TxInvalid(Code.TX_VALIDATION_CODE_UNKNOWN_SIGNER, f"unknown signer: {exc}") from exc
    if not verify_cached(creator.public_key, envelope.signature, envelope.payload):
        raise TxInvalid(Code.TX_VALIDATION_CODE_BAD_SIGNATURE,
                        f"signature of {creator.name} does not verify over the payload")
    tx = transaction_pb2.Transaction()
    try:
        tx.ParseFromString(envelope.payload)
    except DecodeError as exc:
        raise TxInvalid(Code.TX_VALIDATION_CODE_MALFORMED,
                        "payload is not a gridledger.common.v1.Transaction") from exc
    header = tx.header
    if header.creator != creator.name:
        raise TxInvalid(Code.TX_VALIDATION_CODE_BAD_HEADER,
                        f"header creator {header.creator!r} is not the signer {creator.name!r}")
    if len(header.nonce) < MIN_NONCE_BYTES:
        raise TxInvalid(Code.TX_VALIDATION_CODE_BAD_HEADER,
                        f"nonce must be at least {MIN_NONCE_BYTES} bytes")
    expected_id = derive_tx_id(header.nonce, envelope.signer_certificate)
    if header.tx_id != expected_id:
        raise TxInvalid(Code.TX_VALIDATION_CODE_BAD_HEADER,
                        "tx_id is not SHA-256(nonce || creator certificate)")
    if not header.HasField("timestamp"):
        raise TxInvalid(Code.TX_VALIDATION_CODE_BAD_HEADER, "header has no timestamp")
    body = tx.WhichOneof("body")
    if body is None:
        raise TxInvalid(Code.TX_VALIDATION_CODE_MALFORMED, "transaction has no body")
    return CheckedTransaction(tx, header.tx_id, creator, body, envelope.payload)


def check_endorsements(payload: bytes,
                       endorsements: list[envelope_pb2.Endorsement] | object,
                       signers: Signers) -> list[Identity]:
    """At least one valid endorsement by a consortium endorser over `payload`; every
    endorsement present must be valid (a bad one is a sign of tampering, not something to
    skip over). Each endorsement proves the payload is a leaf of a signed batch (see
    envelope.proto): the root is recomputed from the payload and the audit path, and the
    signature must verify over that root and the leaf count."""
    leaf = endorsement_message(payload)
    endorsers: list[Identity] = []
    for endorsement in endorsements:  # type: ignore[attr-defined]
        try:
            endorser = signers.identify(endorsement.endorser_certificate)
        except UnknownSigner as exc:
            raise TxInvalid(Code.TX_VALIDATION_CODE_UNKNOWN_SIGNER,
                            f"endorser unknown: {exc}") from exc
        if endorser.role != Role.ENDORSER:
            raise TxInvalid(Code.TX_VALIDATION_CODE_ENDORSEMENT_FAILURE,
                            f"{endorser.name} is a {endorser.role}, not an endorser")
        try:
            root = merkle.root_from_path(leaf, endorsement.leaf_index, endorsement.leaf_count,
                                         endorsement.audit_path)
        except merkle.ProofError as exc:
            raise TxInvalid(Code.TX_VALIDATION_CODE_ENDORSEMENT_FAILURE,
                            f"endorsement of {endorser.name} has a bad batch proof: {exc}"
                            ) from exc
        message = endorsement_batch_message(endorsement.leaf_count, root)
        if not verify_cached(endorser.public_key, endorsement.signature, message):
            raise TxInvalid(Code.TX_VALIDATION_CODE_ENDORSEMENT_FAILURE,
                            f"endorsement signature of {endorser.name} does not verify over "
                            "the batch root its proof implies")
        endorsers.append(endorser)
    if not endorsers:
        raise TxInvalid(Code.TX_VALIDATION_CODE_ENDORSEMENT_FAILURE, "transaction is not endorsed")
    return endorsers


def open_signed(envelope: envelope_pb2.SignedEnvelope, signers: Signers,
                what: str, unknown_code: int, bad_signature_code: int) -> Identity:
    """The verified signer of an envelope that is not itself a transaction (an option, a
    plant's terms, a trade request), identified like a transaction's creator."""
    try:
        signer = signers.identify(envelope.signer_certificate)
    except UnknownSigner as exc:
        raise TxInvalid(unknown_code, f"{what} signer unknown: {exc}") from exc
    # Through the cache: an endorser verifies the options it signed itself (remembered when
    # signed) at submit and again at its replica's commit.
    if not verify_cached(signer.public_key, envelope.signature, envelope.payload):
        raise TxInvalid(bad_signature_code,
                        f"{what} signature of {signer.name} does not verify over its bytes")
    return signer


def parse_endorsed(raw: bytes) -> envelope_pb2.EndorsedTransaction:
    endorsed = envelope_pb2.EndorsedTransaction()
    try:
        endorsed.ParseFromString(raw)
    except DecodeError as exc:
        raise TxInvalid(Code.TX_VALIDATION_CODE_MALFORMED,
                        "not a gridledger.common.v1.EndorsedTransaction") from exc
    return endorsed


def check_endorsed_transaction(raw: bytes, signers: Signers) -> CheckedTransaction:
    """Everything about an ordered transaction before its body's rule: decoding, signatures,
    and its signers' accounts and revocations in `signers`' state."""
    endorsed = parse_endorsed(raw)
    checked = check_envelope(endorsed.envelope, signers)
    check_endorsements(checked.payload, endorsed.endorsements, signers)
    return checked


@dataclass(frozen=True)
class Orderable:
    """A transaction that passed the ordering checks."""

    tx_id: str
    # The organisation of its creator (verified: its certificate chains to that organisation's
    # CA): the member the orderers' pool charges, whoever endorsed or relayed it.
    member: str


def check_for_ordering(raw: bytes, membership: Membership,
                       max_tx_bytes: int | None = None) -> str:
    """`check_orderable`'s tx id."""
    return check_orderable(raw, membership, max_tx_bytes).tx_id


def check_orderable(raw: bytes, membership: Membership,
                    max_tx_bytes: int | None = None) -> Orderable:
    """What an orderer checks before ordering a transaction: its size (when `max_tx_bytes` is
    given: the genesis limit committers enforce), it decodes, names a tx id, its creator's
    certificate chains to its organisation's CA and is the header's creator, and it carries
    valid endorsements; returns its tx id and its creator's member. The creator's signature was
    checked by the endorser that endorsed it and is checked again by every committer, so the
    orderers do not spend a third verification on it; the certificate check is cached per
    certificate, so it is cheap and keeps unparseable identities out of blocks.

    Raises only TxInvalid: an unexpected exception becomes MALFORMED ("check failed: <type>"),
    so no transaction's bytes can break an orderer's admission or proposal validation."""
    try:
        return _check_for_ordering(raw, membership, max_tx_bytes)
    except TxInvalid:
        raise
    except Exception as exc:
        raise TxInvalid(Code.TX_VALIDATION_CODE_MALFORMED,
                        f"check failed: {type(exc).__name__}") from exc


def _check_for_ordering(raw: bytes, membership: Membership,
                        max_tx_bytes: int | None) -> Orderable:
    if max_tx_bytes is not None and len(raw) > max_tx_bytes:
        raise TxInvalid(Code.TX_VALIDATION_CODE_MALFORMED,
                        f"transaction of {len(raw)} bytes exceeds max_tx_bytes {max_tx_bytes}")
    endorsed = parse_endorsed(raw)
    tx = transaction_pb2.Transaction()
    try:
        tx.ParseFromString(endorsed.envelope.payload)
    except DecodeError as exc:
        raise TxInvalid(Code.TX_VALIDATION_CODE_MALFORMED,
                        "payload is not a gridledger.common.v1.Transaction") from exc
    if not tx.header.tx_id:
        raise TxInvalid(Code.TX_VALIDATION_CODE_BAD_HEADER, "transaction has no tx id")
    # Orderers have no state and must agree whatever their clocks: the creator's certificate
    # must parse and chain to its organisation's CA (cheap, cached), endorsers are bound to the
    # genesis accounts; validity time, account binding and revocations are judged by committers.
    try:
        creator = membership.certificate(endorsed.envelope.signer_certificate)
    except UnknownSigner as exc:
        raise TxInvalid(Code.TX_VALIDATION_CODE_UNKNOWN_SIGNER, f"unknown signer: {exc}") from exc
    if tx.header.creator != creator.name:
        raise TxInvalid(Code.TX_VALIDATION_CODE_BAD_HEADER,
                        f"header creator {tx.header.creator!r} is not the signer {creator.name!r}")
    check_endorsements(endorsed.envelope.payload, endorsed.endorsements,
                       Signers(membership, None, None))
    return Orderable(tx.header.tx_id, creator.org)
