"""A small in-process cluster of real replicas with real Ed25519 and ECVRF, driven by hand."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gridledger.common.v1 import block_pb2
from gridledger.orderer.v1 import consensus_pb2
from gridledger_core.consensus import lottery
from gridledger_core.consensus.actions import Action, Broadcast, Deliver, Persist, Send, SetTimer
from gridledger_core.consensus.protocol import ChainTip, Replica, ReplicaConfig
from gridledger_core.consensus.signing import (
    GENESIS_PREVIOUS_HASH,
    Phase,
    block_hash,
    data_hash,
    round_change_bytes,
    signing_bytes,
)
from gridledger_core.consensus.simulation import (
    Crypto,
    simulated_dependencies,
)

GENESIS_SEED = lottery.genesis_seed(b"unit-test-genesis")

Drop = Callable[[str, str, consensus_pb2.ConsensusMessage], bool]  # (src, dst, msg) -> drop?


@dataclass
class Node:
    oid: str
    replica: Replica
    records: dict[str, bytes] = field(default_factory=dict)
    blocks: list[block_pb2.Block] = field(default_factory=list)
    seeds: list[bytes] = field(default_factory=list)
    timers: dict[str, float] = field(default_factory=dict)  # name -> due time


class Cluster:
    def __init__(self, n: int = 4) -> None:
        self.ids = [f"o{i}" for i in range(n)]
        self.crypto = Crypto(self.ids, real=True)
        self.now = 0.0
        self.nodes: dict[str, Node] = {}
        self.down: set[str] = set()
        self.drop: Drop = lambda src, dst, msg: False
        self.queue: deque[tuple[str, str, consensus_pb2.ConsensusMessage]] = deque()
        self.log: list[tuple[str, list[Action]]] = []
        for oid in self.ids:
            blocks: list[block_pb2.Block] = []
            self.nodes[oid] = Node(oid, self.make_replica(oid, {}, blocks, []), blocks=blocks)

    def config(self, oid: str) -> ReplicaConfig:
        return ReplicaConfig(
            orderer_id=oid,
            orderers=self.crypto.public_keys,
            max_batch_txs=10,
            max_batch_wait=0.05,
            round_timeout=1.0,
        )

    def make_replica(
        self,
        oid: str,
        records: dict[str, bytes],
        blocks: list[block_pb2.Block],
        seeds: list[bytes],
    ) -> Replica:
        deps = simulated_dependencies(self.crypto, oid, blocks)
        return Replica(self.config(oid), deps, self.tip(blocks, seeds), records)

    @staticmethod
    def tip(blocks: list[block_pb2.Block], seeds: list[bytes]) -> ChainTip:
        if not blocks:
            return ChainTip(0, GENESIS_PREVIOUS_HASH, GENESIS_SEED)
        return ChainTip(len(blocks), block_hash(blocks[-1].header), seeds[-1])

    def restart(self, oid: str) -> list[Action]:
        node = self.nodes[oid]
        replica = self.make_replica(oid, dict(node.records), node.blocks, node.seeds)
        node.replica = replica
        node.timers.clear()
        return self.apply(oid, replica.on_start(self.now))

    # --- executing actions -------------------------------------------------------------

    def apply(self, oid: str, actions: list[Action]) -> list[Action]:
        node = self.nodes[oid]
        self.log.append((oid, actions))
        for action in actions:
            if isinstance(action, Persist):
                node.records[action.key] = action.value
            elif isinstance(action, Deliver):
                node.blocks.append(action.block)
                node.seeds.append(action.seed)
            elif isinstance(action, Send):
                self.queue.append((oid, action.to, action.message))
            elif isinstance(action, Broadcast):
                for other in self.ids:
                    if other != oid:
                        self.queue.append((oid, other, action.message))
            elif isinstance(action, SetTimer):
                node.timers[action.name] = self.now + action.delay
        return actions

    def deliver_all(self, limit: int = 10_000) -> None:
        """Deliver queued messages FIFO (through ``drop``) until none are left."""
        while self.queue and limit:
            limit -= 1
            src, dst, msg = self.queue.popleft()
            if src in self.down or dst in self.down or self.drop(src, dst, msg):
                continue
            wire = consensus_pb2.ConsensusMessage.FromString(msg.SerializeToString())
            self.apply(dst, self.nodes[dst].replica.on_message(src, wire, self.now))

    def advance(self, seconds: float) -> None:
        """Move the clock, firing due timers of live nodes in time order."""
        end = self.now + seconds
        while True:
            due = [
                (t, oid, name)
                for oid, node in self.nodes.items()
                if oid not in self.down
                for name, t in node.timers.items()
                if t <= end
            ]
            if not due:
                break
            t, oid, name = min(due)
            self.now = max(self.now, t)
            del self.nodes[oid].timers[name]
            self.apply(oid, self.nodes[oid].replica.on_timer(name, self.now))
            self.deliver_all()
        self.now = end

    def submit(self, oid: str, txs: list[bytes]) -> None:
        self.apply(oid, self.nodes[oid].replica.on_transactions(txs, self.now))
        self.deliver_all()

    def primary(self, round_: int = 0) -> str:
        any_node = next(iter(self.nodes.values())).replica
        return lottery.primary(self.ids, any_node.previous_seed, any_node.height, round_)

    # --- hand-made pre-blocks ---------------------------------------------------------

    def pre_block(
        self,
        proposer: str,
        txs: list[bytes],
        *,
        round_: int = 0,
        height: int = 0,
        previous_hash: bytes = GENESIS_PREVIOUS_HASH,
        previous_seed: bytes = GENESIS_SEED,
        timestamp_ns: int = 1,
    ) -> block_pb2.Block:
        header = block_pb2.BlockHeader(
            number=height,
            previous_hash=previous_hash,
            data_hash=data_hash(txs),
            round=round_,
            proposer=proposer,
            vrf_proof=self.crypto.vrf_prover(proposer)(lottery.alpha(previous_seed, height)),
        )
        header.timestamp.FromNanoseconds(timestamp_ns)
        raw = header.SerializeToString()
        block = block_pb2.Block(header=raw, transactions=txs)
        block.metadata.proposer_signature = self.crypto.signer(proposer)(
            signing_bytes(Phase.PROPOSAL, height, round_, block_hash(raw))
        )
        return block

    def certificate(
        self, phase: Phase, round_: int, block: block_pb2.Block, signers: list[str]
    ) -> consensus_pb2.VoteCertificate:
        bh = block_hash(block.header)
        number = block_pb2.BlockHeader.FromString(block.header).number
        return consensus_pb2.VoteCertificate(
            height=number,
            round=round_,
            phase=int(phase),
            block_hash=bh,
            signatures=[
                block_pb2.CoSignature(
                    orderer=s,
                    signature=self.crypto.signer(s)(signing_bytes(phase, number, round_, bh)),
                )
                for s in signers
            ],
        )

    def round_change(
        self,
        sender: str,
        height: int,
        round_: int,
        lock: consensus_pb2.VoteCertificate | None = None,
    ) -> consensus_pb2.ConsensusMessage:
        """A ROUND_CHANGE signed by ``sender`` (any orderer: also a byzantine one)."""
        rc = consensus_pb2.RoundChange(height=height, round=round_)
        carried = None
        if lock is not None:
            rc.high_prepare.CopyFrom(lock)
            carried = (lock.round, lock.block_hash)
        rc.signature = self.crypto.signer(sender)(round_change_bytes(height, round_, carried))
        return consensus_pb2.ConsensusMessage(round_change=rc)


def sends(actions: list[Action], kind: str) -> list[Send | Broadcast]:
    """Send/Broadcast actions whose message body is ``kind``."""
    return [
        a
        for a in actions
        if isinstance(a, Send | Broadcast) and a.message.WhichOneof("body") == kind
    ]
