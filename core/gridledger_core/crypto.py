"""Hashing and Ed25519 signatures over exact bytes.

Signing identities use Ed25519 (fast verification, deterministic signatures); TLS uses ECDSA
P-256 certificates (see consortium.py) because that is what every gRPC/TLS stack accepts.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl import bindings as sodium
from nacl.exceptions import BadSignatureError

ENDORSEMENT_DOMAIN = b"gridledger/endorsement/v1\x00"
ENDORSEMENT_BATCH_DOMAIN = b"gridledger/endorsement-batch/v1\x00"
NONCE_BYTES = 24


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def derive_tx_id(nonce: bytes, creator_certificate: bytes) -> str:
    """Fabric's rule: the tx id binds the nonce to the creator, so it cannot be replayed by
    another identity and is unique as long as nonces are."""
    return hashlib.sha256(nonce + creator_certificate).hexdigest()


def endorsement_message(payload: bytes) -> bytes:
    """What an endorser signs: a domain-separated digest of the exact payload bytes."""
    return ENDORSEMENT_DOMAIN + sha256(payload)


def endorsement_batch_message(leaf_count: int, root: bytes) -> bytes:
    """What an endorser signs for a batch: the RFC 6962 Merkle root over the batch's
    `endorsement_message`s and the leaf count (8 bytes, big-endian). Naming the count pins the
    tree's shape, so a proof cannot claim another size for the same root."""
    return ENDORSEMENT_BATCH_DOMAIN + leaf_count.to_bytes(8, "big") + root


class Signer:
    """An Ed25519 private key that signs exact bytes."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key_bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        # The same key in libsodium's form (seed and public key), which signs: Ed25519
        # signatures are deterministic, so the bytes are the ones OpenSSL would give, in
        # 20 instead of 33 us here (docs/performance.md, twenty-sixth round).
        _, self._sodium_secret = sodium.crypto_sign_seed_keypair(self.seed())

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes) -> Signer:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("signing key is not an Ed25519 key")
        return cls(key)

    def seed(self) -> bytes:
        """The 32-byte secret seed (also the ECVRF secret key of an orderer)."""
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def to_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def sign(self, data: bytes) -> bytes:
        # crypto_sign returns the signature followed by the message.
        return sodium.crypto_sign(data, self._sodium_secret)[:sodium.crypto_sign_BYTES]


def verify_signature(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """True when `signature` is a valid Ed25519 signature of `data` by `public_key`.

    The ledger's one signature rule, and consensus-critical: Ed25519 libraries disagree on
    signatures a key holder can craft, so every replica must judge with the same one. This is
    libsodium's verification (cofactorless, as RFC 8032's), which beyond RFC 8032 also
    refuses small-order public keys and R points and non-canonical public keys: a real key
    and an honest signer never produce those. It is also faster than OpenSSL's here (43-59
    against 71-84 us, docs/performance.md), and it is what every node verifies most."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        sodium.crypto_sign_open(signature + data, public_key)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True
