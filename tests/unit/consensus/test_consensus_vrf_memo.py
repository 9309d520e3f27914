"""Orderer side of the process's VRF memo (issue 15): in a seeded schedule of real replicas
with real ECVRF (one process, like every orderer's own replica and certificate checks), each
(key, proof, alpha) is verified once however many replicas and checks ask for it."""

from __future__ import annotations

from collections import Counter

import pytest

from gridledger_core.consensus import simulation, vrf


def test_each_proof_is_verified_once_across_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    computed: Counter[tuple[bytes, bytes, bytes]] = Counter()
    asked: Counter[tuple[bytes, bytes, bytes]] = Counter()
    real_uncached, real_verify = vrf.verify_uncached, vrf.verify

    def uncached(pk: bytes, pi: bytes, alpha: bytes) -> bytes | None:
        computed[(pk, pi, alpha)] += 1
        return real_uncached(pk, pi, alpha)

    def verify(pk: bytes, pi: bytes, alpha: bytes) -> bytes | None:
        asked[(pk, pi, alpha)] += 1
        return real_verify(pk, pi, alpha)

    vrf.clear_memo()
    monkeypatch.setattr(vrf, "verify_uncached", uncached)
    monkeypatch.setattr(vrf, "verify", verify)
    try:
        result = simulation.run_schedule(101, real_crypto=True)
    finally:
        vrf.clear_memo()
    assert not result.violations, simulation.failure_report([result])
    assert max(result.heights.values()) >= 1
    assert computed and set(computed.values()) == {1}
    assert set(computed) == set(asked)
    # Several replicas (and their own proposal check) asked about the same proofs.
    assert sum(asked.values()) > len(asked)
