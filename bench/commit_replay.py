"""Commit replay: a committer's blocks from a finished run, committed again into a fresh
ledger in this process, timed by CPU.

The end-to-end figures move by 10-20 % between runs of the same code on this shared machine
(other nodes, the load generator and the host all compete for 2 cores). Replaying the same
blocks is one process doing fixed work, so it resolves changes to the commit path (the rules,
signature checks, the state overlay) that the end-to-end run cannot. It is also a check:
every block must commit to the same state root with the same validation codes as it did on
the live committer, or the replay stops with the first block that differs."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from gridledger.common.v1 import block_pb2, ledger_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.ledger import schema
from gridledger_core.ledger.block_proof import block_verifier
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.sigcache import VERIFIED
from gridledger_core.storage import LmdbStore

SKIPPED_BLOCKS = 5  # genesis-time set-up blocks (registrations, history), not the load


class ReplayMismatch(AssertionError):
    """A block committed to another state root or other codes than on the live node."""


def replay(consortium_dir: Path, ledger_dir: Path) -> dict:
    """Commit every block in `ledger_dir` (a stopped committer's LMDB) into a fresh ledger,
    checking each against the live commit record; CPU per transaction over the blocks after
    the first SKIPPED_BLOCKS."""
    genesis = Genesis.load(consortium_dir / "genesis.json")
    source = LmdbStore(ledger_dir, readonly=True)
    scratch = Path(tempfile.mkdtemp(prefix="gridledger-replay-"))
    store: LmdbStore | None = None
    VERIFIED.clear()  # a fresh committer: nothing verified yet
    transactions = blocks = 0
    cpu = 0.0
    try:
        store = LmdbStore(scratch / "ledger", sync=False)
        ledger = Ledger(store, genesis, block_verifier(genesis))
        number = 0
        while (raw := source.get(schema.block_key(number))) is not None:
            block = block_pb2.Block.FromString(raw)
            raw_record = source.get(schema.commit_record_key(number))
            if raw_record is None:
                raise ReplayMismatch(f"block {number} has no commit record on the live node")
            record = ledger_pb2.BlockCommitRecord.FromString(raw_record)
            started = time.process_time()
            result = ledger.commit(block)
            elapsed = time.process_time() - started
            if result.state_root != record.state_root or \
                    list(result.codes) != list(record.validation_codes):
                raise ReplayMismatch(f"block {number} replays to another state root or other "
                                     "validation codes than the live committer's")
            if number >= SKIPPED_BLOCKS:
                cpu += elapsed
                transactions += len(block.transactions)
                blocks += 1
            number += 1
    finally:
        source.close()
        if store is not None:
            store.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return {"blocks": blocks, "transactions": transactions,
            "cpu_us_per_tx": round(1e6 * cpu / transactions, 1) if transactions else None,
            "txs_per_block": round(transactions / blocks, 1) if blocks else None,
            "identical_to_live": True}
