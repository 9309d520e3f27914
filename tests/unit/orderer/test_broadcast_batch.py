"""OrdererService.BroadcastBatch in-process: a real OrdererServicer over an OrdererNode on a
fresh LMDB store. The node's loop is not started: the test pumps its inbox (as the loop does:
pool, write durably, release the callers) while the API call runs, and records what the API
admitted.

Per-transaction outcomes match what the unary Broadcast answers for each transaction alone;
a request that is not a valid batch is refused whole with INVALID_ARGUMENT and admits
nothing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_helpers import Aborted, FakeContext
from orderer_helpers import Orderer, readings

from gridledger.common.v1 import envelope_pb2
from gridledger.orderer.v1 import orderer_pb2
from gridledger_core.consensus.pool import TxPool
from gridledger_core.genesis import Genesis
from gridledger_orderer import service
from gridledger_orderer.node import PoolRoom
from gridledger_orderer.store import tx_id_of


@pytest.fixture
def orderer(consortium_dir: Path, genesis: Genesis, tmp_path: Path) -> Orderer:
    orderer = Orderer(consortium_dir, genesis, tmp_path / "orderer")
    yield orderer  # type: ignore[misc]
    orderer.store.close()


def test_accepts_a_batch_in_order_with_one_result_each(orderer: Orderer,
                                                        consortium_dir: Path) -> None:
    txs = readings(consortium_dir, 5)
    results = orderer.batch(txs)
    assert [r.tx_id for r in results] == [tx_id_of(tx) for tx in txs]
    assert all(r.code == 0 and not r.duplicate and not r.message for r in results)
    assert orderer.admitted() == txs


def test_per_transaction_refusals_and_duplicates(orderer: Orderer,
                                                 consortium_dir: Path) -> None:
    good = readings(consortium_dir, 2)
    unendorsed = readings(consortium_dir, 1, endorser=None, first=10)[0]
    by_meter = readings(consortium_dir, 1, endorser="meter-2", first=11)[0]
    results = orderer.batch([good[0], unendorsed, good[0], by_meter, good[1]])
    assert [r.code for r in results] == [0, grpc.StatusCode.PERMISSION_DENIED.value[0], 0,
                                         grpc.StatusCode.PERMISSION_DENIED.value[0], 0]
    assert results[1].message == "ENDORSEMENT_FAILURE: transaction is not endorsed"
    assert results[3].message.startswith("ENDORSEMENT_FAILURE: meter-2 is a meter")
    assert [r.duplicate for r in results] == [False, False, True, False, False]
    assert orderer.admitted() == good  # the duplicate once, the refused ones never
    # Known ids (pending in the pool, or final) are duplicates in a later batch too.
    # Pending ids are duplicates in a later batch too (made durable here once more).
    again = orderer.batch(good)
    assert all(r.duplicate and r.code == 0 for r in again)
    assert orderer.admitted() == good


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda txs: [], "endorsed_transactions is empty"),
    (lambda txs: [*txs[:2], b"\xff\xffnot protobuf", txs[2]],
     "endorsed_transactions[2] is not a decodable EndorsedTransaction with a tx id; "
     "nothing was admitted"),
    (lambda txs: [*txs, envelope_pb2.EndorsedTransaction().SerializeToString()],
     "endorsed_transactions[3] is not a decodable EndorsedTransaction with a tx id; "
     "nothing was admitted"),
    (lambda txs: txs * 1000, "endorsed_transactions holds 3000 transactions; at most 2000 "
                             "per call; nothing was admitted"),
])
def test_a_bad_request_is_refused_whole(orderer: Orderer, consortium_dir: Path,
                                        mutate: object, message: str) -> None:
    txs = readings(consortium_dir, 3)
    with pytest.raises(Aborted) as refused:
        orderer.batch(mutate(txs))  # type: ignore[operator]
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details == message
    assert orderer.admitted() == []


def test_too_many_bytes_is_refused_whole(orderer: Orderer, consortium_dir: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    txs = readings(consortium_dir, 3)
    monkeypatch.setattr(service, "MAX_BATCH_BYTES", sum(map(len, txs)) - 1)
    with pytest.raises(Aborted) as refused:
        orderer.batch(txs)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "bytes; at most" in refused.value.details
    assert orderer.admitted() == []


def test_backpressure_when_the_pool_is_full(orderer: Orderer, consortium_dir: Path) -> None:
    pool = orderer.node.replica.pool
    pool.capacity = 6  # one member alone fills half of it (its share, past half: pool.py)
    txs = readings(consortium_dir, 5)
    orderer.node.replica.on_transactions(txs[:1], 0.0)  # one pending: room for two more
    results = orderer.batch(txs)
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert [r.code for r in results] == [0, 0, 0, exhausted, exhausted]
    assert results[0].duplicate
    assert results[3].retry_after_ms == 50
    assert orderer.admitted() == txs[:3]  # the pending one too: made durable here


def test_acknowledged_transactions_are_pooled_even_above_capacity(
        orderer: Orderer, consortium_dir: Path) -> None:
    """Three batches judged before the loop ran (each saw room for two: half the pool, its
    member's share): all wait in the inbox, the loop takes them at once and pools all six,
    although that overshoots the capacity, and writes them in one durable transaction before
    the calls answer OK."""
    replica = orderer.node.replica
    replica.pool.capacity = 4
    txs = readings(consortium_dir, 6)
    answers: list[list[orderer_pb2.BroadcastResult]] = []

    def call(part: list[bytes]) -> None:
        request = orderer_pb2.BroadcastBatchRequest(endorsed_transactions=part)
        answers.append(list(orderer.api.BroadcastBatch(request, FakeContext()).results))  # type: ignore[arg-type]

    threads = [threading.Thread(target=call, args=(part,))
               for part in (txs[:2], txs[2:4], txs[4:])]
    for thread in threads:
        thread.start()
    while orderer.node._inbox.client_bytes() < sum(map(len, txs)):
        time.sleep(0.001)  # both calls judged and waiting
    assert not answers  # nothing is acknowledged before it is durable
    orderer.pump()
    for thread in threads:
        thread.join()
    assert all(r.code == 0 for answer in answers for r in answer)
    assert replica.pending_transactions == 6
    assert all(replica.knows_tx(tx_id_of(tx).encode()) for tx in txs)
    assert sorted(raw for _, raw in orderer.store.pooled()) == sorted(txs)


def test_unary_broadcast_still_answers(orderer: Orderer, consortium_dir: Path) -> None:
    tx = readings(consortium_dir, 1)[0]
    response = orderer.call(lambda: orderer.api.Broadcast(
        orderer_pb2.BroadcastRequest(endorsed_transaction=tx), FakeContext()))  # type: ignore[arg-type]
    assert response.tx_id == tx_id_of(tx) and not response.duplicate
    assert orderer.admitted() == [tx]
    with pytest.raises(Aborted) as refused:
        orderer.api.Broadcast(orderer_pb2.BroadcastRequest(endorsed_transaction=b"\xff"),
                              FakeContext())  # type: ignore[arg-type]
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_one_call_counts_its_own_additions_against_its_members_share() -> None:
    """Past half of the pool a member adds only within its share of half the pool
    (core consensus/pool.py); a BroadcastBatch is judged before any of it is pooled, so
    its own earlier transactions count."""
    pool = TxPool(capacity=40, max_bytes=1_000)
    for i in range(20):  # a flooding member alone: half the pool
        assert pool.add(f"f{i}".encode(), b"x" * 10, 0.0, member="hostile")
    room = PoolRoom(pool)
    assert [room.take("honest", 10) for _ in range(12)] == [True] * 10 + [False] * 2
    assert not room.take("hostile", 10)
