"""A bounded per-process cache of Ed25519 signatures known to be valid.

One endorsement batch signature covers every transaction of the batch, and the endorser's
replica re-executes what its own submit path already verified; both would otherwise pay a
full Ed25519 verification (~130 µs) again in the same process. Only successful verifications
(or signatures this process made itself, see `remember`) are ever entered, so a hit means the
exact (key, signature, message) triple verified before; anything else takes the full check.

Bounded by two generations: new entries go into the young set; when it is full it becomes the
old set and the previous old set is dropped. A hit in the old set is promoted, so entries in
use survive and memory stays at most `capacity` keys.
"""

from __future__ import annotations

import hashlib
import threading

from gridledger_core.crypto import verify_signature

DEFAULT_CAPACITY = 131_072  # ~ a minute of traffic at 2,000 tx/s; ~15 MB of 32-byte keys


class VerifiedSignatures:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 2:
            raise ValueError("capacity must be at least 2")
        self._generation = capacity // 2
        self._young: set[bytes] = set()
        self._old: set[bytes] = set()
        self._lock = threading.Lock()

    @staticmethod
    def _key(public_key: bytes, signature: bytes, message: bytes) -> bytes:
        # Key and signature have fixed lengths (checked before use), so the concatenation is
        # unambiguous; the digest keeps entries small whatever the message length.
        return hashlib.sha256(public_key + signature + message).digest()

    def verify(self, public_key: bytes, signature: bytes, message: bytes) -> bool:
        """verify_signature, answered from the cache when this exact triple verified before."""
        if len(public_key) != 32 or len(signature) != 64:
            return False
        key = self._key(public_key, signature, message)
        if self._hit(key):
            return True
        if not verify_signature(public_key, signature, message):
            return False
        self._add(key)
        return True

    def remember(self, public_key: bytes, signature: bytes, message: bytes) -> None:
        """Enter a signature this process made itself with its own key: never call it with
        anything received from outside (that is what `verify` is for)."""
        if len(public_key) == 32 and len(signature) == 64:
            self._add(self._key(public_key, signature, message))

    def _hit(self, key: bytes) -> bool:
        if key in self._young:
            return True
        with self._lock:
            if key in self._old:
                self._add_locked(key)
                return True
        return False

    def _add(self, key: bytes) -> None:
        with self._lock:
            self._add_locked(key)

    def _add_locked(self, key: bytes) -> None:
        if len(self._young) >= self._generation:
            self._old = self._young
            self._young = set()
        self._young.add(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._young | self._old)

    def clear(self) -> None:
        with self._lock:
            self._young = set()
            self._old = set()


# The process's cache: the endorser's submit path, its signer and its ledger replica share it.
VERIFIED = VerifiedSignatures()


def verify_cached(public_key: bytes, signature: bytes, message: bytes) -> bool:
    return VERIFIED.verify(public_key, signature, message)
