"""RFC 6962 (Certificate Transparency) Merkle tree hashing and audit paths, for any leaf count.

Leaf hash = SHA-256(0x00 || data), node hash = SHA-256(0x01 || left || right); a tree of n > 1
leaves splits at k, the largest power of two below n (RFC 6962 section 2.1). The prefixes keep a
leaf from ever being read as an inner node. Audit paths list the sibling hashes from the leaf
upwards; `root_from_path` is RFC 9162 section 2.1.3.2, which also rejects a path of the wrong
length for (index, count). Pure: no I/O, no state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_BYTES = 32
_LEAF = b"\x00"
_NODE = b"\x01"


class ProofError(ValueError):
    """An audit path that cannot belong to a tree of the claimed size at the claimed index."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(_LEAF + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _subtree(hashes: Sequence[bytes], lo: int, hi: int, paths: list[list[bytes]]) -> bytes:
    """Hash of leaves [lo, hi); appends the other side's hash to the path of every leaf on
    each side, so every node is hashed once and paths come out bottom-up."""
    if hi - lo == 1:
        return hashes[lo]
    mid = lo + _split(hi - lo)
    left = _subtree(hashes, lo, mid, paths)
    right = _subtree(hashes, mid, hi, paths)
    for i in range(lo, mid):
        paths[i].append(right)
    for i in range(mid, hi):
        paths[i].append(left)
    return node_hash(left, right)


def tree(leaves: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root of the leaves' data and every leaf's audit path (RFC 6962 PATH), in order."""
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    paths: list[list[bytes]] = [[] for _ in leaves]
    root = _subtree([leaf_hash(d) for d in leaves], 0, len(leaves), paths)
    return root, paths


def root(leaves: Sequence[bytes]) -> bytes:
    return tree(leaves)[0]


def root_from_path(data: bytes, index: int, count: int, path: Sequence[bytes]) -> bytes:
    """The root that leaf `data` at `index` of a `count`-leaf tree and its audit path imply.

    The caller compares it with (or checks a signature over) the expected root. Raises
    ProofError when the index, count or path length cannot be right."""
    if count < 1:
        raise ProofError("leaf count must be at least 1")
    if not 0 <= index < count:
        raise ProofError(f"leaf index {index} is not below the leaf count {count}")
    fn, sn = index, count - 1
    r = leaf_hash(data)
    for p in path:
        if len(p) != HASH_BYTES:
            raise ProofError(f"audit path element of {len(p)} bytes, not {HASH_BYTES}")
        if sn == 0:
            raise ProofError("audit path is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # A right-most node with no sibling at this level is promoted unchanged.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("audit path is shorter than the tree is deep")
    return r
