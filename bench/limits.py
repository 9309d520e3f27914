"""The machine's own limits, measured in the same run as everything else, so every figure can
be read as a ratio to them: Ed25519 verifications per second and synced LMDB commits per
second (one small write transaction each, as a block commit is); and ECVRF proofs made and
verified per second (one of each per block, in every orderer, committer and endorser)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from gridledger_core.consensus import vrf
from gridledger_core.crypto import Signer, verify_signature
from gridledger_core.storage import LmdbStore, WriteBatch

PROFILES = {"quick": (2_000, 200, 50), "standard": (20_000, 1_000, 500)}


def ed25519_verifications_per_second(count: int) -> float:
    signer = Signer.generate()
    messages = [i.to_bytes(8, "big") * 16 for i in range(256)]
    signatures = [signer.sign(m) for m in messages]
    key = signer.public_key_bytes
    start = time.perf_counter()
    for i in range(count):
        verify_signature(key, signatures[i % 256], messages[i % 256])
    return count / (time.perf_counter() - start)


def ecvrf_per_second(count: int) -> tuple[float, float]:
    """(proofs made, proofs verified) per second, without the per-process memo."""
    seed = bytes(range(32))
    key = vrf.public_key(seed)
    alphas = [i.to_bytes(8, "big") for i in range(count)]
    start = time.perf_counter()
    proofs = [vrf.prove(seed, alpha) for alpha in alphas]
    proved = time.perf_counter()
    for proof, alpha in zip(proofs, alphas, strict=True):
        vrf.verify_uncached(key, proof, alpha)
    verified = time.perf_counter()
    return count / (proved - start), count / (verified - proved)


def lmdb_synced_commits_per_second(count: int) -> float:
    with tempfile.TemporaryDirectory() as directory:
        store = LmdbStore(Path(directory))
        payload = b"x" * 2048
        start = time.perf_counter()
        for i in range(count):
            batch = WriteBatch()
            batch.put(i.to_bytes(8, "big"), payload)
            store.commit(batch)
        elapsed = time.perf_counter() - start
        store.close()
    return count / elapsed


def run(profile: str = "standard") -> dict:
    verifications, commits, proofs = PROFILES[profile]
    proved, verified = ecvrf_per_second(proofs)
    result = {
        "ed25519_verify_per_s": round(ed25519_verifications_per_second(verifications)),
        "lmdb_synced_commits_per_s": round(lmdb_synced_commits_per_second(commits)),
        "ecvrf_prove_per_s": round(proved),
        "ecvrf_verify_per_s": round(verified),
    }
    print(f"limits: {result['ed25519_verify_per_s']:,} Ed25519 verifications/s, "
          f"{result['lmdb_synced_commits_per_s']:,} synced LMDB commits/s, "
          f"ECVRF {result['ecvrf_prove_per_s']:,} proofs/s and "
          f"{result['ecvrf_verify_per_s']:,} verifications/s")
    return result
