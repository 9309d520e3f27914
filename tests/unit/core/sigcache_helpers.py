"""Counting the Ed25519 verifications made through the process's signature cache."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gridledger_core import sigcache


@pytest.fixture()
def verifications(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """The full Ed25519 verifications made through the process cache, starting empty."""
    seen: list[bytes] = []
    real = sigcache.verify_signature

    def counting(public_key: bytes, signature: bytes, data: bytes) -> bool:
        seen.append(data)
        return real(public_key, signature, data)

    sigcache.VERIFIED.clear()
    monkeypatch.setattr(sigcache, "verify_signature", counting)
    yield seen
    sigcache.VERIFIED.clear()
