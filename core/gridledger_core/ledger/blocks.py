"""Block hashing: the header hash chains blocks, the data hash binds the transactions."""

from __future__ import annotations

from collections.abc import Sequence

from gridledger_core.crypto import sha256

GENESIS_PREVIOUS_HASH = b"\x00" * 32


def header_hash(header_bytes: bytes) -> bytes:
    return sha256(header_bytes)


def data_hash(transactions: Sequence[bytes]) -> bytes:
    """SHA-256 over the concatenated SHA-256 digests of each transaction's exact bytes."""
    return sha256(b"".join(sha256(tx) for tx in transactions))
