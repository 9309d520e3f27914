"""The machine's own limits, measured in the same run as everything else, so every figure can
be read as a ratio to them: Ed25519 verifications per second and synced LMDB commits per
second (one small write transaction each, as a block commit is)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from gridledger_core.crypto import Signer, verify_signature
from gridledger_core.storage import LmdbStore, WriteBatch

PROFILES = {"quick": (2_000, 200), "standard": (20_000, 1_000)}


def ed25519_verifications_per_second(count: int) -> float:
    signer = Signer.generate()
    messages = [i.to_bytes(8, "big") * 16 for i in range(256)]
    signatures = [signer.sign(m) for m in messages]
    key = signer.public_key_bytes
    start = time.perf_counter()
    for i in range(count):
        verify_signature(key, signatures[i % 256], messages[i % 256])
    return count / (time.perf_counter() - start)


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
    verifications, commits = PROFILES[profile]
    result = {
        "ed25519_verify_per_s": round(ed25519_verifications_per_second(verifications)),
        "lmdb_synced_commits_per_s": round(lmdb_synced_commits_per_second(commits)),
    }
    print(f"limits: {result['ed25519_verify_per_s']:,} Ed25519 verifications/s, "
          f"{result['lmdb_synced_commits_per_s']:,} synced LMDB commits/s")
    return result
