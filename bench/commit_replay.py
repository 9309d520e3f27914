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
from dataclasses import dataclass
from pathlib import Path

from gridledger.common.v1 import block_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.audit import verify_ledger
from gridledger_core.sigcache import VERIFIED
from gridledger_core.storage import LmdbStore

SKIPPED_BLOCKS = 5  # genesis-time set-up blocks (registrations, history), not the load


class ReplayMismatch(AssertionError):
    """A block committed to another state root or other codes than on the live node."""


def replay(consortium_dir: Path, ledger_dir: Path) -> dict:
    """`gridctl ledger verify`'s replay of every block in `ledger_dir` (a stopped committer's
    LMDB) into a fresh LMDB ledger, timed: CPU per transaction over the blocks after the
    first SKIPPED_BLOCKS."""
    genesis = Genesis.load(consortium_dir / "genesis.json")
    scratch = Path(tempfile.mkdtemp(prefix="gridledger-replay-"))
    timed = _Timed()

    VERIFIED.clear()  # a fresh committer: nothing verified yet
    source = LmdbStore(ledger_dir, readonly=True)
    try:
        target = LmdbStore(scratch / "ledger", sync=False)
        try:
            report = verify_ledger(source, genesis, into=target, observe=timed.add)
        finally:
            target.close()
    finally:
        source.close()
        shutil.rmtree(scratch, ignore_errors=True)
    if not report.ok:
        raise ReplayMismatch(f"block {report.problem_height} {report.problem}")
    blocks, transactions = timed.blocks, timed.transactions
    return {"blocks": blocks, "transactions": transactions,
            "cpu_us_per_tx": round(1e6 * timed.cpu / transactions, 1) if transactions else None,
            "txs_per_block": round(transactions / blocks, 1) if blocks else None,
            "identical_to_live": True}


@dataclass
class _Timed:
    """The blocks after the set-up ones: how many, their transactions, their commit CPU."""

    blocks: int = 0
    transactions: int = 0
    cpu: float = 0.0

    def add(self, number: int, block: block_pb2.Block, cpu_seconds: float) -> None:
        if number >= SKIPPED_BLOCKS:
            self.blocks += 1
            self.transactions += len(block.transactions)
            self.cpu += cpu_seconds
