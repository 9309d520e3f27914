"""The verified-signature cache: never a yes for anything that did not verify, bounded."""

from __future__ import annotations

import threading

import pytest

from gridledger_core import sigcache
from gridledger_core.crypto import Signer
from gridledger_core.sigcache import VerifiedSignatures


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Counts the full Ed25519 verifications the cache falls through to."""
    seen: list[bytes] = []
    real = sigcache.verify_signature

    def counting(public_key: bytes, signature: bytes, data: bytes) -> bool:
        seen.append(data)
        return real(public_key, signature, data)

    monkeypatch.setattr(sigcache, "verify_signature", counting)
    return seen


def test_a_valid_signature_is_verified_once(calls: list[bytes]) -> None:
    cache, signer = VerifiedSignatures(), Signer.generate()
    signature = signer.sign(b"message")
    for _ in range(5):
        assert cache.verify(signer.public_key_bytes, signature, b"message")
    assert calls == [b"message"]
    assert len(cache) == 1


def test_never_says_yes_to_what_did_not_verify(calls: list[bytes]) -> None:
    cache, signer, other = VerifiedSignatures(), Signer.generate(), Signer.generate()
    signature = signer.sign(b"message")
    assert cache.verify(signer.public_key_bytes, signature, b"message")
    bad = bytes([signature[0] ^ 1]) + signature[1:]
    for _ in range(2):  # a failure is not cached either way: checked in full every time
        assert not cache.verify(signer.public_key_bytes, bad, b"message")
        assert not cache.verify(other.public_key_bytes, signature, b"message")
        assert not cache.verify(signer.public_key_bytes, signature, b"other message")
        assert not cache.verify(signer.public_key_bytes, signature, b"message\x00")
    assert len(calls) == 1 + 2 * 4
    assert len(cache) == 1
    # Malformed lengths never reach the library nor the cache.
    assert not cache.verify(signer.public_key_bytes[:31], signature, b"message")
    assert not cache.verify(signer.public_key_bytes, signature + b"\x00", b"message")


def test_remember_covers_only_the_exact_triple(calls: list[bytes]) -> None:
    cache, signer = VerifiedSignatures(), Signer.generate()
    signature = signer.sign(b"signed here")
    cache.remember(signer.public_key_bytes, signature, b"signed here")
    assert cache.verify(signer.public_key_bytes, signature, b"signed here")
    assert calls == []
    assert not cache.verify(signer.public_key_bytes, signature, b"signed elsewhere")


def test_size_stays_bounded_and_entries_in_use_survive(calls: list[bytes]) -> None:
    cache, signer = VerifiedSignatures(capacity=64), Signer.generate()
    hot_signature = signer.sign(b"hot")
    cache.remember(signer.public_key_bytes, hot_signature, b"hot")
    for i in range(1_000):
        message = i.to_bytes(4, "big")
        cache.remember(signer.public_key_bytes, bytes(64), message)
        assert len(cache) <= 64
        if i % 16 == 0:  # used regularly: promoted before its generation is dropped
            assert cache.verify(signer.public_key_bytes, hot_signature, b"hot")
    assert calls == []
    cache.clear()
    assert len(cache) == 0


def test_concurrent_use(calls: list[bytes]) -> None:
    cache, signer = VerifiedSignatures(capacity=32), Signer.generate()
    signed = [(signer.sign(bytes([i])), bytes([i])) for i in range(40)]
    failures: list[int] = []

    def work() -> None:
        for _ in range(20):
            for signature, message in signed:
                if not cache.verify(signer.public_key_bytes, signature, message):
                    failures.append(1)
                if cache.verify(signer.public_key_bytes, signature, message + b"!"):
                    failures.append(2)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(cache) <= 32
