"""ECVRF-EDWARDS25519-SHA512-TAI (RFC 9381, suite string 0x03).

The VRF secret key is a 32-byte Ed25519 seed and the VRF public key is the Ed25519 public
key of that seed (RFC 9381 section 5.5 reuses RFC 8032's secret expansion), so an orderer's
signing key is also its lottery key.

Group arithmetic goes through libsodium (``nacl.bindings``), including decoding an
arbitrary curve point and multiplying it by the cofactor (try-and-increment needs to know
whether a hash is a point at all), which libsodium's scalar multiplication refuses for points
outside the prime-order subgroup: its point addition does not (``_cofactor_cleared``).

Deliberate strictness beyond RFC 9381 (``verify`` returns None, never a different beta):
the public key and the proof's Gamma must be canonical points of the prime-order subgroup.
An honest key (x*B) and an honest Gamma (x*H, H cofactor-cleared) always are, so every
proof made by ``prove`` verifies; only crafted proofs with a small-order component, which
RFC 9381 would accept with the same beta, are refused.

``verify`` and ``proof_to_hash`` are pure functions of their bytes, so each process keeps a
bounded memo of their answers, refusals included: the same block's proof is otherwise checked
by the consensus replica, the certificate check, and every committer path that verifies it,
each paying the verification again (~0.3 ms; ~1 ms while point decoding was pure Python).
"""

from __future__ import annotations

import hashlib

from nacl import bindings as sodium

from gridledger_core.lru import Lru

SUITE = b"\x03"
PROOF_LEN = 80  # Gamma (32) || c (16) || s (32)
OUTPUT_LEN = 64
PUBLIC_KEY_LEN = 32
SEED_LEN = 32

_P = 2**255 - 19
_Q = 2**252 + 27742317777372353535851937790883648493
_C_LEN = 16

# Entries are ~250 bytes (key, proof, alpha, beta): a few thousand blocks' worth, under 1 MB.
MEMO_CAPACITY = 4096
_VERIFIED: Lru[bytes, bytes | None] = Lru(MEMO_CAPACITY)
_HASHED: Lru[bytes, bytes | None] = Lru(MEMO_CAPACITY)


def _sha512(*parts: bytes) -> bytes:
    return hashlib.sha512(b"".join(parts)).digest()


# --- decoding an arbitrary point and clearing its cofactor ----------------------------------

_IDENTITY = (1).to_bytes(32, "little")
_ORDER_TWO_Y = _P - 1  # the point (0, -1); (0, 1) is the identity


def _cofactor_cleared(data: bytes) -> bytes | None:
    """8 * P for the point P that `data` encodes (RFC 8032 section 5.1.3 decoding, any
    subgroup), None when `data` encodes no point.

    libsodium's point addition decodes its operands with only an on-curve check (unlike its
    scalar multiplication, which refuses points outside the prime-order subgroup), so three
    doublings compute 8P in C. It decodes more leniently than RFC 8032 in two cases, refused
    here first: a y of p or more (it reduces y mod p) and x = 0 with the sign bit set (it
    returns x = 0). Pure-Python decoding cost ~150 us per try; this is a few us."""
    if len(data) != 32:
        return None
    as_int = int.from_bytes(data, "little")
    y = as_int & ((1 << 255) - 1)
    if y >= _P or (as_int >> 255 and y in (1, _ORDER_TWO_Y)):
        return None
    try:
        point = sodium.crypto_core_ed25519_add(data, data)
    except RuntimeError:  # no x for this y: not a point
        return None
    point = sodium.crypto_core_ed25519_add(point, point)
    return sodium.crypto_core_ed25519_add(point, point)


# --- RFC 9381 building blocks -------------------------------------------------------------


def _expand_seed(seed: bytes) -> tuple[bytes, bytes]:
    """Return (x as 32-byte little-endian scalar reduced mod q, nonce-key half of SHA512)."""
    digest = _sha512(seed)
    scalar = bytearray(digest[:32])
    scalar[0] &= 248
    scalar[31] &= 127
    scalar[31] |= 64
    x = sodium.crypto_core_ed25519_scalar_reduce(bytes(scalar) + bytes(32))
    return x, digest[32:]


def _encode_to_curve_tai(salt: bytes, alpha: bytes) -> bytes:
    """ECVRF_encode_to_curve_try_and_increment (RFC 9381 section 5.4.1.1)."""
    for ctr in range(256):
        hash_string = _sha512(SUITE, b"\x01", salt, alpha, bytes([ctr]), b"\x00")
        cleared = _cofactor_cleared(hash_string[:32])
        if cleared is not None and cleared != _IDENTITY:
            return cleared
    # Each try fails with probability about 1/2; 256 failures in a row do not happen.
    raise ValueError("try_and_increment found no point")


def _challenge(*points: bytes) -> bytes:
    """ECVRF_challenge_generation (section 5.4.3): the 16-byte little-endian c string."""
    return _sha512(SUITE, b"\x02", *points, b"\x00")[:_C_LEN]


def _nonce(nonce_key: bytes, h_string: bytes) -> bytes:
    """ECVRF_nonce_generation_RFC8032 (section 5.4.2.2), as a reduced scalar."""
    return sodium.crypto_core_ed25519_scalar_reduce(_sha512(nonce_key, h_string))


def _scalar16(c_string: bytes) -> bytes:
    return c_string + bytes(32 - _C_LEN)


# --- public API --------------------------------------------------------------------------


def public_key(seed: bytes) -> bytes:
    """The VRF (= Ed25519) public key of a 32-byte seed."""
    if len(seed) != SEED_LEN:
        raise ValueError("VRF secret key must be a 32-byte Ed25519 seed")
    x, _ = _expand_seed(seed)
    return sodium.crypto_scalarmult_ed25519_base_noclamp(x)


def prove(seed: bytes, alpha: bytes) -> bytes:
    """ECVRF_prove (section 5.1): the 80-byte proof pi for alpha under the seed's key."""
    if len(seed) != SEED_LEN:
        raise ValueError("VRF secret key must be a 32-byte Ed25519 seed")
    x, nonce_key = _expand_seed(seed)
    pk = sodium.crypto_scalarmult_ed25519_base_noclamp(x)
    h = _encode_to_curve_tai(pk, alpha)
    gamma = sodium.crypto_scalarmult_ed25519_noclamp(x, h)
    k = _nonce(nonce_key, h)
    u = sodium.crypto_scalarmult_ed25519_base_noclamp(k)
    v = sodium.crypto_scalarmult_ed25519_noclamp(k, h)
    c_string = _challenge(pk, h, gamma, u, v)
    s = sodium.crypto_core_ed25519_scalar_add(
        k, sodium.crypto_core_ed25519_scalar_mul(_scalar16(c_string), x)
    )
    return gamma + c_string + s


def proof_to_hash(pi: bytes) -> bytes | None:
    """ECVRF_proof_to_hash (section 5.2): the 64-byte output beta, None if pi is malformed.

    Only meaningful for a proof that ``verify`` accepted. Memoised per process (exact: a pure
    function of ``pi``)."""
    if len(pi) != PROOF_LEN:
        return None
    hit, beta = _HASHED.get(bytes(pi))
    if hit:
        return beta
    beta = proof_to_hash_uncached(pi)
    _HASHED.put(bytes(pi), beta)
    return beta


def proof_to_hash_uncached(pi: bytes) -> bytes | None:
    if len(pi) != PROOF_LEN:
        return None
    cleared = _cofactor_cleared(pi[:32])
    if cleared is None or int.from_bytes(pi[48:], "little") >= _Q:
        return None
    return _sha512(SUITE, b"\x03", cleared, b"\x00")


def verify(pk: bytes, pi: bytes, alpha: bytes) -> bytes | None:
    """ECVRF_verify (section 5.3, validate_key = TRUE): beta if pi is valid, else None.

    Memoised per process, refusals too: the answer is a pure function of (pk, pi, alpha), so
    a hit is exactly what ``verify_uncached`` would return again."""
    if len(pk) != PUBLIC_KEY_LEN or len(pi) != PROOF_LEN:
        return None
    # pk and pi have fixed lengths here, so the concatenation names the triple unambiguously.
    key = bytes(pk) + bytes(pi) + bytes(alpha)
    hit, beta = _VERIFIED.get(key)
    if hit:
        return beta
    beta = verify_uncached(pk, pi, alpha)
    _VERIFIED.put(key, beta)
    return beta


def verify_uncached(pk: bytes, pi: bytes, alpha: bytes) -> bytes | None:
    """``verify`` without the memo: the RFC 9381 computation itself."""
    if len(pk) != PUBLIC_KEY_LEN or len(pi) != PROOF_LEN:
        return None
    gamma, c_string, s = pi[:32], pi[32:48], pi[48:]
    if int.from_bytes(s, "little") >= _Q:
        return None
    if not (
        sodium.crypto_core_ed25519_is_valid_point(pk)
        and sodium.crypto_core_ed25519_is_valid_point(gamma)
    ):
        return None
    h = _encode_to_curve_tai(pk, alpha)
    c = _scalar16(c_string)
    try:
        u = sodium.crypto_core_ed25519_sub(
            sodium.crypto_scalarmult_ed25519_base_noclamp(s),
            sodium.crypto_scalarmult_ed25519_noclamp(c, pk),
        )
        v = sodium.crypto_core_ed25519_sub(
            sodium.crypto_scalarmult_ed25519_noclamp(s, h),
            sodium.crypto_scalarmult_ed25519_noclamp(c, gamma),
        )
    except RuntimeError:
        # libsodium refuses a zero scalar (s = 0 or c = 0): never produced by ``prove``
        # except with negligible probability, so treated as an invalid proof.
        return None
    if _challenge(pk, h, gamma, u, v) != c_string:
        return None
    return proof_to_hash(pi)  # memoised: the committer asks again for the next block's seed


def clear_memo() -> None:
    """Forget every memoised answer (for tests that count verifications)."""
    _VERIFIED.clear()
    _HASHED.clear()
