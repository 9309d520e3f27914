"""`make bench`'s commit replay: a stopped committer's blocks committed again into a fresh
ledger must reach the live committer's state roots and codes, and it says so when not."""

from __future__ import annotations

from pathlib import Path

import pytest
from ledger_helpers import endorsed, identity, past_interval, reading
from signed_blocks import Replicas

from bench import commit_replay
from gridledger.common.v1 import ledger_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.ledger import schema
from gridledger_core.storage import LmdbStore
from gridledger_core.storage.base import WriteBatch

BLOCKS = commit_replay.SKIPPED_BLOCKS + 3


def _committed_chain(genesis: Genesis, consortium_dir: Path, tmp_path: Path) -> Path:
    replicas = Replicas(genesis, consortium_dir, tmp_path)
    meter, endorser = identity(consortium_dir, "meter-1"), identity(consortium_dir, "endorser-1")
    try:
        for n in range(BLOCKS):
            replicas.commit([endorsed(meter.new_transaction(
                "meter_reading", reading("meter-1", past_interval(2 * n + k))), endorser)
                for k in (1, 2)])
    finally:
        replicas.close()
    return tmp_path / "c1"


def test_a_replay_matches_the_live_committer(genesis: Genesis, consortium_dir: Path,
                                             tmp_path: Path) -> None:
    ledger_dir = _committed_chain(genesis, consortium_dir, tmp_path)
    result = commit_replay.replay(consortium_dir, ledger_dir)
    assert result["blocks"] == BLOCKS - commit_replay.SKIPPED_BLOCKS
    assert result["transactions"] == 2 * result["blocks"]
    assert result["identical_to_live"] and result["cpu_us_per_tx"] > 0


def test_a_replay_that_reaches_another_state_root_stops(genesis: Genesis, consortium_dir: Path,
                                                         tmp_path: Path) -> None:
    ledger_dir = _committed_chain(genesis, consortium_dir, tmp_path)
    store = LmdbStore(ledger_dir)
    key = schema.commit_record_key(2)
    record = ledger_pb2.BlockCommitRecord.FromString(store.get(key) or b"")
    record.state_root = bytes(32)  # as if the live committer had reached another state
    batch = WriteBatch()
    batch.put(key, record.SerializeToString())
    store.commit(batch)
    store.close()
    with pytest.raises(commit_replay.ReplayMismatch, match="block 2 "):
        commit_replay.replay(consortium_dir, ledger_dir)


def test_a_block_without_its_commit_record_stops_the_replay(genesis: Genesis,
                                                            consortium_dir: Path,
                                                            tmp_path: Path) -> None:
    ledger_dir = _committed_chain(genesis, consortium_dir, tmp_path)
    store = LmdbStore(ledger_dir)
    batch = WriteBatch()
    batch.delete(schema.commit_record_key(3))
    store.commit(batch)
    store.close()
    with pytest.raises(commit_replay.ReplayMismatch, match="block 3 has no commit record"):
        commit_replay.replay(consortium_dir, ledger_dir)
