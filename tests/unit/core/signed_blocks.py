"""Final blocks exactly as the orderer cluster makes them, signed with the consortium's real
orderer keys: the lottery-entitled primary of (height, round 0) stamps its VRF proof and signs
the pre-block, and a quorum of orderers co-signs its COMMIT. Committers accept these through
the production verifier (`block_proof.block_verifier`), so tests need no stand-in for it.

Also a minimal in-process orderer (`DeliverServer`): the real OrdererService contract over
mTLS, serving `Deliver` from a list of such blocks, for tests of the block follower."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc

from gridledger.common.v1 import block_pb2
from gridledger.orderer.v1 import orderer_pb2, orderer_pb2_grpc
from gridledger_core.consensus import lottery, vrf
from gridledger_core.consensus.quorum import Quorum
from gridledger_core.consensus.signing import (
    GENESIS_PREVIOUS_HASH,
    Phase,
    block_hash,
    data_hash,
    signing_bytes,
)
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.audit import verify_ledger
from gridledger_core.ledger.block_proof import block_verifier
from gridledger_core.ledger.ledger import CommitResult, Ledger
from gridledger_core.rpc.height_notifier import STREAM_OPEN
from gridledger_core.rpc.tls import SERVER_OPTIONS, TlsFiles
from gridledger_core.signing_identity import SigningIdentity
from gridledger_core.storage import LmdbStore


class SignedChain:
    """Cuts final blocks that chain onto each other, signed like the cluster signs them."""

    def __init__(self, genesis: Genesis, consortium_dir: Path) -> None:
        self.orderer_keys = genesis.orderer_keys
        self.orderers = {name: SigningIdentity.load(consortium_dir, name)
                         for name in sorted(self.orderer_keys)}
        self.quorum = Quorum(len(self.orderers)).q
        self.previous_hash = GENESIS_PREVIOUS_HASH
        self.previous_seed = lottery.genesis_seed(genesis.hash)
        self.number = 0
        self.blocks: list[block_pb2.Block] = []

    def block(self, transactions: list[bytes], timestamp: float | None = None) -> block_pb2.Block:
        height = self.number
        proposer = lottery.primary(self.orderer_keys, self.previous_seed, height, 0)
        signer = self.orderers[proposer].signer
        proof = vrf.prove(signer.seed(), lottery.alpha(self.previous_seed, height))
        header = block_pb2.BlockHeader(number=height, previous_hash=self.previous_hash,
                                       data_hash=data_hash(transactions), round=0,
                                       proposer=proposer, vrf_proof=proof)
        header.timestamp.FromNanoseconds(int((timestamp or time.time()) * 1e9))
        raw = header.SerializeToString()
        this_hash = block_hash(raw)
        block = block_pb2.Block(header=raw, transactions=transactions)
        block.metadata.proposer_signature = signer.sign(
            signing_bytes(Phase.PROPOSAL, height, 0, this_hash))
        commit = signing_bytes(Phase.COMMIT, height, 0, this_hash)
        block.metadata.commit_certificate.round = 0
        for name in list(self.orderers)[:self.quorum]:
            block.metadata.commit_certificate.signatures.add(
                orderer=name, signature=self.orderers[name].signer.sign(commit))
        seed = vrf.proof_to_hash(proof)
        assert seed is not None
        self.previous_hash, self.previous_seed, self.number = this_hash, seed, height + 1
        self.blocks.append(block)
        return block


class Replicas:
    """Two committers and an endorser's replica on LMDB, fed the same signed blocks."""

    def __init__(self, genesis: Genesis, consortium_dir: Path, tmp_path: Path) -> None:
        self.genesis = genesis
        self.stores = [LmdbStore(tmp_path / name) for name in ("c1", "c2", "endorser")]
        self.ledgers = [Ledger(store, genesis, block_verifier(genesis)) for store in self.stores]
        self.chain = SignedChain(genesis, consortium_dir)

    def commit(self, transactions: list[bytes]) -> CommitResult:
        block = self.chain.block(transactions)
        results = [ledger.commit(block) for ledger in self.ledgers]
        for other in results[1:]:
            assert (other.codes, other.messages, other.state_root) == (
                results[0].codes, results[0].messages, results[0].state_root)
        return results[0]

    def check_replay(self) -> None:
        report = verify_ledger(self.stores[0], self.genesis)
        assert report.ok, report.problem
        assert report.state_root == self.ledgers[0].chain.state_root

    def close(self) -> None:
        for store in self.stores:
            store.close()


class _Deliver(orderer_pb2_grpc.OrdererServiceServicer):
    def __init__(self, blocks: list[block_pb2.Block], grew: threading.Condition,
                 pace: float) -> None:
        self._blocks = blocks
        self._grew = grew
        self._pace = pace

    def Deliver(self, request: orderer_pb2.DeliverRequest,
                context: grpc.ServicerContext) -> Iterator[orderer_pb2.DeliverResponse]:
        number = request.start_number
        context.send_initial_metadata((STREAM_OPEN,))  # as a real orderer's Deliver opens
        while context.is_active():
            with self._grew:
                if number >= len(self._blocks):
                    if not request.follow:
                        return
                    self._grew.wait(0.2)
                    continue
                block = self._blocks[number]
            number += 1
            if self._pace and request.follow:  # one block at a time, however many it has
                time.sleep(self._pace)
            yield orderer_pb2.DeliverResponse(block=block)


class DeliverServer:
    """Serves `Deliver` of the blocks appended to it, as orderer `name`, on loopback; with
    `pace`, a followed stream sends one block every `pace` seconds (an orderer handing out
    blocks slowly on purpose)."""

    def __init__(self, consortium_dir: Path, name: str = "orderer-1",
                 pace: float = 0.0) -> None:
        self.blocks: list[block_pb2.Block] = []
        self._grew = threading.Condition()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                                   options=SERVER_OPTIONS)
        orderer_pb2_grpc.add_OrdererServiceServicer_to_server(
            _Deliver(self.blocks, self._grew, pace), self._server)
        tls = TlsFiles.for_node(consortium_dir, name)
        port = self._server.add_secure_port("localhost:0", tls.server_credentials())
        self.address = f"localhost:{port}"
        self._server.start()

    def append(self, block: block_pb2.Block) -> None:
        with self._grew:
            self.blocks.append(block)
            self._grew.notify_all()

    def stop(self) -> None:
        self._server.stop(0).wait()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll `condition` (a follower's progress) until true, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)
