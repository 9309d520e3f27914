"""The exact bytes every consensus signature covers, and block hashing.

Orderers, committers and the simulator all call these functions, so a vote can never be
checked against bytes other than the ones that were signed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from enum import IntEnum

DOMAIN = b"gridledger/orderer/v1\x00"


class Phase(IntEnum):
    """What a signature vouches for. The values are part of the signed bytes: never reuse."""

    PROPOSAL = 1  # the primary's signature on its pre-block
    PREPARE = 2  # first-phase co-signature: "this pre-block is valid and I am not locked elsewhere"
    COMMIT = 3  # second-phase co-signature: "I am locked on this block"; q of them make it final
    ROUND_CHANGE = 4  # "I gave up on earlier rounds of this height; this is my lock"


def signing_bytes(phase: Phase, height: int, round_: int, block_hash: bytes) -> bytes:
    """DOMAIN || phase (1 byte) || height (8 bytes BE) || round (4 bytes BE) || block hash (32)."""
    if len(block_hash) != 32:
        raise ValueError("block hash must be 32 bytes")
    return (
        DOMAIN
        + bytes([int(phase)])
        + height.to_bytes(8, "big")
        + round_.to_bytes(4, "big")
        + block_hash
    )


def round_change_bytes(height: int, round_: int, lock: tuple[int, bytes] | None) -> bytes:
    """DOMAIN || ROUND_CHANGE (1) || height (8 BE) || round (4 BE) || has-lock (1) ||
    lock round (4 BE) || lock block hash (32); without a lock both are zero bytes."""
    if lock is not None and len(lock[1]) != 32:
        raise ValueError("block hash must be 32 bytes")
    lock_round, lock_hash = lock if lock is not None else (0, bytes(32))
    return (
        DOMAIN
        + bytes([int(Phase.ROUND_CHANGE)])
        + height.to_bytes(8, "big")
        + round_.to_bytes(4, "big")
        + bytes([lock is not None])
        + lock_round.to_bytes(4, "big")
        + lock_hash
    )


def block_hash(header_bytes: bytes) -> bytes:
    """SHA-256 of the exact serialized BlockHeader; this is the next block's previous_hash."""
    return hashlib.sha256(header_bytes).digest()


def data_hash(transactions: Iterable[bytes]) -> bytes:
    """SHA-256 over the concatenated SHA-256 digests of each transaction's bytes, in order."""
    outer = hashlib.sha256()
    for tx in transactions:
        outer.update(hashlib.sha256(tx).digest())
    return outer.digest()


GENESIS_PREVIOUS_HASH = bytes(32)
