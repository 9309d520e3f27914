"""`gridctl ledger verify` on a running committer: the chain state and the state it compares
must be of one moment. Verified from an LMDB snapshot, a block committed meanwhile is neither
half seen (the integration run found 'stored state ... differs' on a live fast-profile
committer) nor a reason to fail."""

from __future__ import annotations

from pathlib import Path

from ledger_helpers import endorsed, identity, past_interval, reading
from signed_blocks import Replicas

from gridledger_core.genesis import Genesis
from gridledger_core.ledger import schema
from gridledger_core.ledger.audit import verify_ledger


def test_verify_from_a_snapshot_ignores_a_block_committed_meanwhile(
        genesis: Genesis, consortium_dir: Path, tmp_path: Path) -> None:
    replicas = Replicas(genesis, consortium_dir, tmp_path)
    meter, endorser = identity(consortium_dir, "meter-1"), identity(consortium_dir, "endorser-1")

    def reading_tx(n: int) -> bytes:
        return endorsed(meter.new_transaction("meter_reading", reading("meter-1",
                                                                      past_interval(n))),
                        endorser)

    replicas.commit([reading_tx(2)])
    store = replicas.stores[0]
    try:
        with store.snapshot() as snapshot:
            replicas.commit([reading_tx(1)])  # the live committer moves on
            later = schema.state_key(schema.reading_key("meter-1", past_interval(1)))
            assert store.get(later) is not None and snapshot.get(later) is None
            assert all(key != later for key, _ in snapshot.scan(schema.STATE))
            report = verify_ledger(snapshot, genesis)
            assert report.ok, report.problem
            assert report.blocks_checked == 1
        assert verify_ledger(store, genesis).blocks_checked == 2
    finally:
        replicas.close()
