"""crypto.Signer signs with libsodium: the very signatures RFC 8032 (and OpenSSL) give."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gridledger_core.crypto import Signer, verify_signature

# RFC 8032, 7.1, TEST 2: secret key, public key, message, signature.
RFC_SEED = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
RFC_PUBLIC = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
RFC_SIGNATURE = bytes.fromhex(
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
    "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00")


def test_the_rfc_8032_test_vector() -> None:
    signer = Signer(Ed25519PrivateKey.from_private_bytes(RFC_SEED))
    assert signer.public_key_bytes == RFC_PUBLIC
    assert signer.sign(b"\x72") == RFC_SIGNATURE


@settings(max_examples=60, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), data=st.binary(max_size=2048))
def test_signatures_are_openssls_and_verify(seed: bytes, data: bytes) -> None:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    signature = Signer(key).sign(data)
    assert signature == key.sign(data)
    assert verify_signature(Signer(key).public_key_bytes, signature, data)
