"""A node's or device's own signing identity, and building signed transactions with it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf.message import Message

from gridledger.common.v1 import envelope_pb2, transaction_pb2
from gridledger_core import merkle
from gridledger_core.consortium import NodeMaterial
from gridledger_core.crypto import (
    Signer,
    derive_tx_id,
    endorsement_batch_message,
    endorsement_message,
    new_nonce,
)


@dataclass(frozen=True)
class SigningIdentity:
    name: str
    signer: Signer
    certificate: bytes  # DER

    @classmethod
    def load(cls, consortium_dir: Path, name: str) -> SigningIdentity:
        material = NodeMaterial(consortium_dir, name)
        cert = x509.load_pem_x509_certificate(material.signing_cert.read_bytes())
        return cls(name, Signer.from_pem(material.signing_key.read_bytes()),
                   cert.public_bytes(serialization.Encoding.DER))

    def sign_envelope(self, payload: bytes) -> envelope_pb2.SignedEnvelope:
        return envelope_pb2.SignedEnvelope(payload=payload, signature=self.signer.sign(payload),
                                           signer_certificate=self.certificate)

    def new_transaction(self, body_field: str, body: Message,
                        timestamp: float | None = None) -> envelope_pb2.SignedEnvelope:
        """A signed Transaction carrying `body` in the oneof field `body_field`."""
        nonce = new_nonce()
        tx = transaction_pb2.Transaction()
        tx.header.tx_id = derive_tx_id(nonce, self.certificate)
        tx.header.creator = self.name
        tx.header.nonce = nonce
        tx.header.timestamp.FromNanoseconds(int((timestamp or time.time()) * 1e9))
        getattr(tx, body_field).CopyFrom(body)
        return self.sign_envelope(tx.SerializeToString())

    def endorse(self, envelope: envelope_pb2.SignedEnvelope) -> envelope_pb2.Endorsement:
        """Endorse one transaction: a batch of one (count 1, empty audit path)."""
        return self.endorse_batch([envelope.payload])[1][0]

    def endorse_batch(self, payloads: Sequence[bytes]
                      ) -> tuple[bytes, list[envelope_pb2.Endorsement]]:
        """One signature over the Merkle root of the payloads' endorsement messages; returns
        the signed batch message and one endorsement per payload, in order."""
        root, paths = merkle.tree([endorsement_message(p) for p in payloads])
        message = endorsement_batch_message(len(payloads), root)
        signature = self.signer.sign(message)
        return message, [envelope_pb2.Endorsement(signature=signature,
                                                  endorser_certificate=self.certificate,
                                                  leaf_index=i, leaf_count=len(payloads),
                                                  audit_path=path)
                         for i, path in enumerate(paths)]


def envelope_tx_id(envelope: envelope_pb2.SignedEnvelope) -> str:
    """The tx id a signed transaction claims in its header (as signed; not verified here)."""
    return transaction_pb2.Transaction.FromString(envelope.payload).header.tx_id
