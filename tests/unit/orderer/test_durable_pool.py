"""Acknowledged means durable: what Broadcast/BroadcastBatch answered OK for is in the
orderer's LMDB pool before the answer, comes back to the replica after a crash, and leaves
the pool with the block that makes it final.

A crash is simulated as kill -9 would leave things: the running orderer is neither stopped
nor closed; its LMDB directory is copied as it is on disk at that instant and a new orderer
is started on the copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest
from grpc_helpers import FakeContext
from orderer_helpers import Orderer, readings

from gridledger.common.v1 import block_pb2
from gridledger.orderer.v1 import consensus_pb2, orderer_pb2
from gridledger_core.consensus.actions import Deliver
from gridledger_core.genesis import Genesis
from gridledger_core.storage import LmdbStore
from gridledger_orderer import node as node_module
from gridledger_orderer.store import OrdererStore, tx_id_of


@pytest.fixture
def orderer(consortium_dir: Path, genesis: Genesis, tmp_path: Path) -> Orderer:
    orderer = Orderer(consortium_dir, genesis, tmp_path / "orderer")
    yield orderer  # type: ignore[misc]
    orderer.store.close()


def crash_and_restart(orderer: Orderer, consortium_dir: Path, genesis: Genesis,
                      tmp_path: Path, name: str = "restarted") -> Orderer:
    """The orderer's disk state now, opened by a new orderer process (simulated)."""
    copy = tmp_path / name
    shutil.copytree(tmp_path / "orderer", copy)
    restarted = Orderer(consortium_dir, genesis, copy)
    restarted.node._restore_pool()  # what `start` does before its loop runs
    return restarted


def final_block(number: int, txs: list[bytes]) -> Deliver:
    header = block_pb2.BlockHeader(number=number).SerializeToString()
    return Deliver(block_pb2.Block(header=header, transactions=txs), b"seed")


def _forward(txs: list[bytes]) -> consensus_pb2.ConsensusMessage:
    return consensus_pb2.ConsensusMessage(tx_forward=consensus_pb2.TxForward(transactions=txs))


def pending_ids(orderer: Orderer) -> set[str]:
    return {tx_id.decode() for tx_id, _ in orderer.node.replica.pool.items()}


def test_acknowledged_transactions_survive_a_crash(orderer: Orderer, consortium_dir: Path,
                                                   genesis: Genesis, tmp_path: Path) -> None:
    txs = readings(consortium_dir, 6)
    assert all(r.code == 0 for r in orderer.batch(txs[:4]))
    unary = orderer.call(lambda: orderer.api.Broadcast(
        orderer_pb2.BroadcastRequest(endorsed_transaction=txs[4]), FakeContext()))  # type: ignore[arg-type]
    assert not unary.duplicate  # type: ignore[attr-defined]
    restarted = crash_and_restart(orderer, consortium_dir, genesis, tmp_path)
    try:
        assert pending_ids(restarted) == {tx_id_of(tx) for tx in txs[:5]}
        # Still the same transactions: a retry is a duplicate, the unseen one is new.
        results = restarted.batch(txs)
        assert [r.duplicate for r in results] == [True] * 5 + [False]
    finally:
        restarted.store.close()


def test_a_pending_duplicate_is_made_durable_here(orderer: Orderer, consortium_dir: Path,
                                                  genesis: Genesis, tmp_path: Path) -> None:
    """A transaction this orderer holds only because a peer forwarded it (never written
    here) is answered `duplicate` only once this orderer has written it too."""
    tx = readings(consortium_dir, 1)[0]
    orderer.node.replica.on_message(
        "orderer-2", _forward([tx]), 0.0)  # pooled in memory, from a peer
    assert orderer.store.pooled() == []
    assert orderer.batch([tx])[0].duplicate
    restarted = crash_and_restart(orderer, consortium_dir, genesis, tmp_path)
    try:
        assert pending_ids(restarted) == {tx_id_of(tx)}
    finally:
        restarted.store.close()


def test_a_final_block_takes_its_transactions_out_of_the_pool(orderer: Orderer,
                                                              consortium_dir: Path) -> None:
    txs = readings(consortium_dir, 3)
    orderer.batch(txs)
    assert len(orderer.store.pooled()) == 3
    orderer.store.apply([final_block(0, txs[:2])], orderer.node.tx_id)
    assert [raw for _, raw in orderer.store.pooled()] == [txs[2]]
    assert orderer.store.is_final(tx_id_of(txs[0]).encode())


def test_a_pooled_transaction_already_final_is_dropped_on_restart(
        orderer: Orderer, consortium_dir: Path, genesis: Genesis, tmp_path: Path) -> None:
    """The block was stored first, a late acknowledgement wrote its transaction again: on
    restart that entry is dropped, not re-ordered."""
    txs = readings(consortium_dir, 2)
    orderer.store.apply([final_block(0, txs[:1])], orderer.node.tx_id)
    orderer.store.apply([], orderer.node.tx_id,
                        [(tx_id_of(tx).encode(), tx) for tx in txs])  # a late write
    restarted = crash_and_restart(orderer, consortium_dir, genesis, tmp_path)
    try:
        assert pending_ids(restarted) == {tx_id_of(txs[1])}
        assert [raw for _, raw in restarted.store.pooled()] == [txs[1]]
        # Final, as the store says (no orderer holds every final id in memory): duplicate.
        assert restarted.node.replica.final_ids_in_memory == 0
        assert restarted.batch(txs[:1])[0].duplicate
    finally:
        restarted.store.close()


def test_nothing_is_acknowledged_when_it_cannot_be_written(orderer: Orderer,
                                                           consortium_dir: Path) -> None:
    tx = readings(consortium_dir, 1)[0]
    orderer.store.close()
    orderer.store = OrdererStore(LmdbStore(orderer.store._store.path, readonly=True))
    orderer.node._store = orderer.api._store = orderer.store  # writes now fail
    result = orderer.batch([tx])[0]
    assert result.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "could not be made durable" in result.message



def test_a_restart_forwards_its_pool_in_groups_below_the_peers_limit(
        orderer: Orderer, consortium_dir: Path, genesis: Genesis, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    txs = readings(consortium_dir, 7)
    orderer.batch(txs)
    monkeypatch.setattr(node_module, "_GROUP_BYTES", 3 * max(map(len, txs)))
    copy = tmp_path / "restarted"
    shutil.copytree(tmp_path / "orderer", copy)
    restarted = Orderer(consortium_dir, genesis, copy)
    sent: list[consensus_pb2.ConsensusMessage] = []
    restarted.node._transport.broadcast = sent.append  # type: ignore[method-assign]
    try:
        restarted.node._restore_pool()
        forwards = [m.tx_forward for m in sent if m.HasField("tx_forward")]
        assert [len(f.transactions) for f in forwards] == [3, 3, 1]
        assert pending_ids(restarted) == {tx_id_of(tx) for tx in txs}
    finally:
        restarted.store.close()


def test_each_synced_write_of_the_consensus_thread_is_timed(orderer: Orderer,
                                                            consortium_dir: Path) -> None:
    """`gridledger_orderer_store_write_seconds` counts the synced writes the consensus
    thread waits for (a slow disk stalls consensus: operators must see it)."""
    from prometheus_client import REGISTRY

    def writes() -> float:
        return REGISTRY.get_sample_value("gridledger_orderer_store_write_seconds_count") or 0.0

    before = writes()
    assert all(r.code == 0 for r in orderer.batch(readings(consortium_dir, 2)))
    assert writes() == before + 1  # one group, one synced write
    orderer.node._execute([])  # nothing durable: no write, nothing timed
    assert writes() == before + 1
    orderer.store.close()
    orderer.store = OrdererStore(LmdbStore(orderer.store._store.path, readonly=True))
    orderer.node._store = orderer.api._store = orderer.store  # writes now fail
    refused = orderer.batch(readings(consortium_dir, 1))[0]
    assert refused.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert writes() == before + 2  # a failed write is timed too
