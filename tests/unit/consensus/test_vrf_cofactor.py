"""The VRF's point decoding and cofactor clearing through libsodium (`_cofactor_cleared`)
gives exactly what RFC 8032 decoding followed by multiplication by 8 gives, for every 32-byte
string: the reference below is the pure-Python code it replaced. Every orderer and committer
runs it on every block's VRF proof (try-and-increment hashes, and the proof's Gamma), so a
single string on which the two differ would be a consensus split."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gridledger_core.consensus import vrf

P = 2**255 - 19
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def reference_decode(data: bytes) -> tuple[int, int] | None:
    """RFC 8032 section 5.1.3."""
    as_int = int.from_bytes(data, "little")
    sign, y = as_int >> 255, as_int & ((1 << 255) - 1)
    if y >= P:
        return None
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = (u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P)) % P
    if (v * x * x) % P == u:
        pass
    elif (v * x * x) % P == (-u) % P:
        x = (x * SQRT_M1) % P
    else:
        return None
    if x == 0 and sign == 1:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y)


def reference_times_eight(point: tuple[int, int]) -> bytes:
    """Three affine doublings on -x^2 + y^2 = 1 + d x^2 y^2, encoded."""
    x, y = point
    for _ in range(3):
        xx, yy, xy = x * x % P, y * y % P, x * y % P
        dxxyy = D * xx * yy % P
        x = 2 * xy * pow(1 + dxxyy, -1, P) % P
        y = (yy + xx) * pow(1 - dxxyy, -1, P) % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def reference(data: bytes) -> bytes | None:
    point = reference_decode(data)
    return None if point is None else reference_times_eight(point)


def encode(x: int, y: int) -> bytes:
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


# The points of small order (the identity, (0, -1), and the order-4 and order-8 points),
# the boundary encodings a lenient decoder accepts (y >= p, x = 0 with the sign bit), and a
# prime-order point.
EDGES = [
    encode(0, 1), encode(0, P - 1), (1 | 1 << 255).to_bytes(32, "little"),
    (P - 1 | 1 << 255).to_bytes(32, "little"), P.to_bytes(32, "little"),
    (P + 1).to_bytes(32, "little"), ((1 << 255) - 1).to_bytes(32, "little"),
    (2**256 - 1).to_bytes(32, "little"), bytes(32), bytes([0x80] + [0] * 30 + [0x80]),
    encode(SQRT_M1, 0), encode(P - SQRT_M1, 0),
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    vrf.public_key(bytes(32)),
]


def test_edge_encodings_agree_with_rfc8032() -> None:
    for data in EDGES:
        assert vrf._cofactor_cleared(data) == reference(data), data.hex()


def test_a_valid_point_and_a_non_point_are_told_apart() -> None:
    assert vrf._cofactor_cleared(vrf.public_key(bytes(32))) is not None
    non_points = [y.to_bytes(32, "little") for y in range(2, 40)
                  if reference_decode(y.to_bytes(32, "little")) is None]
    assert non_points
    for data in non_points:
        assert vrf._cofactor_cleared(data) is None


@settings(max_examples=3_000, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_any_32_bytes_agree_with_rfc8032(data: bytes) -> None:
    assert vrf._cofactor_cleared(data) == reference(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(0, 7))
def test_points_with_a_small_order_component_agree(seed: bytes, torsion: int) -> None:
    """A prime-order point plus a small-order one: decodable, outside the prime-order
    subgroup, and cleared to the same multiple by both."""
    small_order = [encode(0, 1), encode(0, P - 1), encode(SQRT_M1, 0), encode(P - SQRT_M1, 0),
                   EDGES[12], EDGES[13]]
    from nacl import bindings as sodium
    base = sodium.crypto_scalarmult_ed25519_base_noclamp(
        sodium.crypto_core_ed25519_scalar_reduce(seed + bytes(32)) if any(seed) else
        (1).to_bytes(32, "little"))
    mixed = sodium.crypto_core_ed25519_add(base, small_order[torsion % len(small_order)])
    assert vrf._cofactor_cleared(mixed) == reference(mixed)
