"""ECVRF-EDWARDS25519-SHA512-TAI against RFC 9381 Appendix B.3 (Examples 16, 17, 18)."""

from __future__ import annotations

import pytest

from gridledger_core.consensus import vrf

# (SK, PK, alpha, pi, beta) exactly as printed in RFC 9381 Appendix B.3.
RFC9381_B3 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "8657106690b5526245a92b003bb079ccd1a92130477671f6fc01ad16f26f723f"
        "26f8a57ccaed74ee1b190bed1f479d9727d2d0f9b005a6e456a35d4fb0daab12"
        "68a1b0db10836d9826a528ca76567805",
        "90cf1df3b703cce59e2a35b925d411164068269d7b2d29f3301c03dd757876ff"
        "66b71dda49d2de59d03450451af026798e8f81cd2e333de5cdf4f3e140fdd8ae",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "f3141cd382dc42909d19ec5110469e4feae18300e94f304590abdced48aed593"
        "3bf0864a62558b3ed7f2fea45c92a465301b3bbf5e3e54ddf2d935be3b67926d"
        "a3ef39226bbc355bdc9850112c8f4b02",
        "eb4440665d3891d668e7e0fcaf587f1b4bd7fbfe99d0eb2211ccec90496310eb"
        "5e33821bc613efb94db5e5b54c70a848a0bef4553a41befc57663b56373a5031",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "9bc0f79119cc5604bf02d23b4caede71393cedfbb191434dd016d30177ccbf80"
        "96bb474e53895c362d8628ee9f9ea3c0e52c7a5c691b6c18c9979866568add7a"
        "2d41b00b05081ed0f58ee5e31b3a970e",
        "645427e5d00c62a23fb703732fa5d892940935942101e456ecca7bb217c61c45"
        "2118fec1219202a0edcf038bb6373241578be7217ba85a2687f7a0310b2df19f",
    ),
]

VECTORS = [tuple(bytes.fromhex(v) for v in row) for row in RFC9381_B3]


@pytest.mark.parametrize(("sk", "pk", "alpha", "pi", "beta"), VECTORS, ids=["ex16", "ex17", "ex18"])
def test_rfc9381_vector(sk: bytes, pk: bytes, alpha: bytes, pi: bytes, beta: bytes) -> None:
    assert vrf.public_key(sk) == pk
    assert vrf.prove(sk, alpha) == pi
    assert vrf.proof_to_hash(pi) == beta
    assert vrf.verify(pk, pi, alpha) == beta


@pytest.mark.parametrize(("sk", "pk", "alpha", "pi", "beta"), VECTORS, ids=["ex16", "ex17", "ex18"])
def test_tampering_is_rejected(sk: bytes, pk: bytes, alpha: bytes, pi: bytes, beta: bytes) -> None:
    for position in (0, 31, 32, 47, 48, 79):  # Gamma, c and s
        bad = bytearray(pi)
        bad[position] ^= 0x01
        assert vrf.verify(pk, bytes(bad), alpha) is None
    assert vrf.verify(pk, pi, alpha + b"\x00") is None
    assert vrf.verify(pk, pi[:-1], alpha) is None
    others = [row[1] for row in VECTORS if row[1] != pk]
    for other in others:
        assert vrf.verify(other, pi, alpha) is None


def test_small_order_and_off_curve_keys_are_rejected() -> None:
    _, _, alpha, pi, _ = VECTORS[0]
    identity = (1).to_bytes(32, "little")
    assert vrf.verify(identity, pi, alpha) is None
    assert vrf.verify(bytes(32), pi, alpha) is None
    assert vrf.verify(b"\xff" * 32, pi, alpha) is None


def test_non_canonical_s_is_rejected() -> None:
    _, pk, alpha, pi, _ = VECTORS[1]
    s = int.from_bytes(pi[48:], "little")
    order = 2**252 + 27742317777372353535851937790883648493
    assert vrf.verify(pk, pi[:48] + (s + order).to_bytes(32, "little"), alpha) is None


def test_prove_is_deterministic_and_output_unique_per_input() -> None:
    seed = bytes(range(32))
    pk = vrf.public_key(seed)
    first = vrf.prove(seed, b"height 7")
    assert vrf.prove(seed, b"height 7") == first
    assert len(first) == vrf.PROOF_LEN
    beta = vrf.verify(pk, first, b"height 7")
    assert beta is not None and len(beta) == vrf.OUTPUT_LEN
    assert vrf.verify(pk, vrf.prove(seed, b"height 8"), b"height 8") != beta


def test_secret_key_must_be_a_seed() -> None:
    with pytest.raises(ValueError):
        vrf.prove(b"short", b"")
