"""RFC 6962 Merkle trees: the published Certificate Transparency vectors, the audit-path
definition of RFC 6962 section 2.1.1 written out literally, and properties over random
batches (every leaf verifies; any changed bit does not)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridledger_core import merkle

# Certificate Transparency's reference leaves and the tree heads of sizes 1..8.
CT_LEAVES = [bytes.fromhex(h) for h in ["", "00", "10", "2021", "3031", "40414243",
                                        "5051525354555657",
                                        "606162636465666768696a6b6c6d6e6f"]]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_PATHS = {
    (0, 8): ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
             "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
    (5, 8): ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
}


def rfc_mth(d: list[bytes]) -> bytes:
    """MTH as RFC 6962 section 2.1 defines it (recursive, for comparison only)."""
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1
    while k * 2 < len(d):
        k *= 2
    return hashlib.sha256(b"\x01" + rfc_mth(d[:k]) + rfc_mth(d[k:])).digest()


def rfc_path(m: int, d: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) as RFC 6962 section 2.1.1 defines it."""
    if len(d) == 1:
        return []
    k = 1
    while k * 2 < len(d):
        k *= 2
    if m < k:
        return [*rfc_path(m, d[:k]), rfc_mth(d[k:])]
    return [*rfc_path(m - k, d[k:]), rfc_mth(d[:k])]


@pytest.mark.parametrize("size", range(1, 9))
def test_certificate_transparency_roots(size: int) -> None:
    assert merkle.root(CT_LEAVES[:size]).hex() == CT_ROOTS[size - 1]


@pytest.mark.parametrize("index, size", sorted(CT_PATHS))
def test_certificate_transparency_audit_paths(index: int, size: int) -> None:
    root, paths = merkle.tree(CT_LEAVES[:size])
    assert [p.hex() for p in paths[index]] == CT_PATHS[(index, size)]
    assert merkle.root_from_path(CT_LEAVES[index], index, size, paths[index]) == root


def test_paths_match_the_rfc_definition_for_every_small_size() -> None:
    for size in range(1, 70):
        leaves = [i.to_bytes(2, "big") for i in range(size)]
        root, paths = merkle.tree(leaves)
        assert root == rfc_mth(leaves)
        assert paths == [rfc_path(m, leaves) for m in range(size)]


def test_a_batch_of_one_is_its_leaf_hash_with_an_empty_path() -> None:
    root, paths = merkle.tree([b"only"])
    assert paths == [[]]
    assert root == merkle.leaf_hash(b"only") == merkle.root_from_path(b"only", 0, 1, [])


def test_no_leaves_is_an_error() -> None:
    with pytest.raises(ValueError):
        merkle.tree([])


@pytest.mark.parametrize("index, count, path, message", [
    (0, 0, [], "leaf count"),
    (3, 3, [bytes(32)] * 2, "not below the leaf count"),
    (7, 3, [bytes(32)] * 2, "not below the leaf count"),
    (-1, 3, [bytes(32)] * 2, "not below the leaf count"),
    (0, 3, [bytes(32)], "shorter"),
    (0, 3, [bytes(32)] * 3, "longer"),
    (0, 1, [bytes(32)], "longer"),
    (0, 2, [bytes(31)], "31 bytes"),
])
def test_impossible_proofs_are_refused_with_the_reason(index: int, count: int,
                                                       path: list[bytes], message: str) -> None:
    with pytest.raises(merkle.ProofError, match=message):
        merkle.root_from_path(b"leaf", index, count, path)


batches = st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=300)
# Endorsed payloads differ (distinct tx ids); with two equal leaves, swapping their indexes
# would rightly still prove the same content.
unique_batches = st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=300,
                          unique=True)


@settings(max_examples=60, deadline=None)
@given(batches)
def test_every_leaf_of_a_random_batch_verifies(leaves: list[bytes]) -> None:
    root, paths = merkle.tree(leaves)
    for index, data in enumerate(leaves):
        assert merkle.root_from_path(data, index, len(leaves), paths[index]) == root


def _flip(data: bytes, bit: int) -> bytes:
    bit %= len(data) * 8
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _implied(data: bytes, index: int, count: int, path: list[bytes]) -> bytes | None:
    try:
        return merkle.root_from_path(data, index, count, path)
    except merkle.ProofError:
        return None


@settings(max_examples=200, deadline=None)
@given(unique_batches, st.data())
def test_any_flipped_bit_fails(leaves: list[bytes], data: st.DataObject) -> None:
    """A changed payload, path element, index or root never yields the signed root. (The
    count is bound by the signature over count and root, tested with the endorsements:
    RFC 6962 paths alone do not pin the tree size.)"""
    count = len(leaves)
    root, paths = merkle.tree(leaves)
    index = data.draw(st.integers(0, count - 1), label="index")
    path = paths[index]
    bit = data.draw(st.integers(0, 2**16), label="bit")

    changed = _flip(leaves[index], bit) if leaves[index] else b"\x00"
    assert _implied(changed, index, count, path) != root
    if path:
        which = data.draw(st.integers(0, len(path) - 1), label="element")
        bad = [*path[:which], _flip(path[which], bit), *path[which + 1:]]
        assert _implied(leaves[index], index, count, bad) != root
    other = index ^ (1 << data.draw(st.integers(0, 31), label="index bit"))
    assert _implied(leaves[index], other, count, path) != root
    assert merkle.root_from_path(leaves[index], index, count, path) != _flip(root, bit)


@settings(max_examples=100, deadline=None)
@given(unique_batches, unique_batches, st.data())
def test_a_proof_from_another_batch_fails(first: list[bytes], second: list[bytes],
                                          data: st.DataObject) -> None:
    # Distinct contents (the same leaves in the same order are the same tree, rightly).
    first = [b"one:" + leaf for leaf in first]
    second = [b"two:" + leaf for leaf in second]
    root, _ = merkle.tree(first)
    _, paths = merkle.tree(second)
    index = data.draw(st.integers(0, len(second) - 1))
    implied = _implied(second[index], index, len(second), paths[index])
    assert implied is not None and implied != root
