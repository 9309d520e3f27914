"""The ledger's one Ed25519 rule (crypto.verify_signature, libsodium's verification).

An honest key and signer are judged exactly as OpenSSL judges them. What differs is what only
a crafted key or signature shows: a hostile CA can certify any 32 bytes as a member's key,
and with OpenSSL's verification the identity point as a key takes the same signature for
every message, so anyone could sign as that member. The rule refuses small-order keys and R
points and non-canonical S."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from gridledger_core.crypto import Signer, verify_signature

L = 2**252 + 27742317777372353535851937790883648493  # the group order
IDENTITY = bytes([1]) + bytes(31)
SMALL_ORDER_KEYS = [
    IDENTITY,                                              # order 1
    bytes.fromhex("ec" + "ff" * 30 + "7f"),                # order 2: (0, -1)
    bytes(32),                                             # order 4
    bytes(31) + b"\x80",                                   # order 4, the other sign
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),  # order 8
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),  # order 8
]
SEEDS = st.binary(min_size=32, max_size=32)
MESSAGES = st.binary(max_size=300)


def openssl_accepts(key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def keypair(seed: bytes) -> tuple[Signer, bytes]:
    signer = Signer(Ed25519PrivateKey.from_private_bytes(seed))
    return signer, signer.public_key_bytes


@given(seed=SEEDS, message=MESSAGES)
def test_an_honest_signature_verifies(seed: bytes, message: bytes) -> None:
    signer, key = keypair(seed)
    assert verify_signature(key, signer.sign(message), message)


@given(seed=SEEDS, message=MESSAGES, bit=st.integers(min_value=0, max_value=8 * (32 + 64) - 1))
def test_any_flipped_bit_of_key_or_signature_is_judged_as_openssl_judges_it(
        seed: bytes, message: bytes, bit: int) -> None:
    signer, key = keypair(seed)
    joined = bytearray(key + signer.sign(message))
    joined[bit // 8] ^= 1 << (bit % 8)
    bad_key, bad_signature = bytes(joined[:32]), bytes(joined[32:])
    assert verify_signature(bad_key, bad_signature, message) is False
    assert openssl_accepts(bad_key, bad_signature, message) is False


@given(seed=SEEDS, message=MESSAGES, other=MESSAGES)
def test_a_signature_does_not_carry_over_to_another_message(seed: bytes, message: bytes,
                                                            other: bytes) -> None:
    signer, key = keypair(seed)
    assert verify_signature(key, signer.sign(message), other) is (other == message)


@given(message=MESSAGES)
def test_the_identity_key_takes_no_universal_signature(message: bytes) -> None:
    universal = IDENTITY + bytes(32)  # R = identity, S = 0: [S]B - [h]A = identity for any h
    assert openssl_accepts(IDENTITY, universal, message)  # why the rule is not OpenSSL's
    assert not verify_signature(IDENTITY, universal, message)


@pytest.mark.parametrize("key", SMALL_ORDER_KEYS, ids=lambda k: k.hex()[:8])
@given(message=MESSAGES, r_index=st.integers(min_value=0, max_value=len(SMALL_ORDER_KEYS) - 1),
       s=st.integers(min_value=0, max_value=L - 1))
def test_small_order_keys_verify_nothing(key: bytes, message: bytes, r_index: int,
                                         s: int) -> None:
    signature = SMALL_ORDER_KEYS[r_index] + s.to_bytes(32, "little")
    assert not verify_signature(key, signature, message)


@given(seed=SEEDS, message=MESSAGES)
def test_a_non_canonical_s_is_refused(seed: bytes, message: bytes) -> None:
    signer, key = keypair(seed)
    signature = signer.sign(message)
    s = int.from_bytes(signature[32:], "little") + L  # the same scalar, encoded >= L (< 2^253)
    malleated = signature[:32] + s.to_bytes(32, "little")
    assert not verify_signature(key, malleated, message)


@pytest.mark.parametrize("key,signature", [(b"", bytes(64)), (bytes(31), bytes(64)),
                                           (bytes(32), bytes(63)), (bytes(33), bytes(65))])
def test_wrong_lengths_are_refused(key: bytes, signature: bytes) -> None:
    assert not verify_signature(key, signature, b"m")


@given(message=MESSAGES)
def test_a_non_canonical_key_encoding_is_refused(message: bytes) -> None:
    """The identity point encoded as y = p + 1 (an encoding RFC 8032 does not allow)."""
    p = 2**255 - 19
    aliased = (p + 1).to_bytes(32, "little")
    assert not verify_signature(aliased, IDENTITY + bytes(32), message)
    assert not verify_signature(aliased, aliased + bytes(32), message)
