"""No input raises out of the replica, and the cluster still commits afterwards (issue 13).

Inputs: random bytes parsed as ConsensusMessages, genuine messages of a recorded run replayed
as they are or with mutated fields (extreme integers, random bytes), arbitrary senders
(known orderers and strangers), messages a byzantine orderer signs with its real key
(pre-blocks with out-of-range time stamps or rounds, round changes and votes with extreme
rounds), arbitrary transactions and timer names.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from consensus_harness import Cluster
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridledger.common.v1 import block_pb2
from gridledger.orderer.v1 import consensus_pb2
from gridledger_core.consensus import lottery
from gridledger_core.consensus.actions import Broadcast, Send
from gridledger_core.consensus.signing import Phase, block_hash, data_hash, signing_bytes

_EXTREMES = {
    FieldDescriptor.TYPE_UINT32: [0, 1, 2, 63, 64, 65, (1 << 30) + 1, (1 << 31), (1 << 32) - 1],
    FieldDescriptor.TYPE_UINT64: [0, 1, 2, (1 << 32) - 1, 1 << 32, (1 << 63), (1 << 64) - 1],
    FieldDescriptor.TYPE_INT64: [0, -1, (1 << 63) - 1, -(1 << 63)],
    FieldDescriptor.TYPE_INT32: [0, -1, (1 << 31) - 1, -(1 << 31)],
    FieldDescriptor.TYPE_ENUM: [0, 1, 2, 3, 4, -1, (1 << 31) - 1],
}


@dataclass(frozen=True)
class Recording:
    messages: tuple[bytes, ...]
    durable: dict[str, tuple[dict[str, bytes], list[block_pb2.Block], list[bytes]]]


@cache
def recorded() -> Recording:
    """Every message of a run with two blocks, a silent primary and a round change, and what
    each replica kept durably at its end. Each example resumes this cluster from its durable
    state, so replayed certificates are ones its own replicas signed (certificates from a
    parallel history with the same keys would need more than f faulty signers)."""
    cluster = Cluster()
    cluster.submit("o1", [b"ok:rec:1", b"ok:rec:2"])
    cluster.advance(0.5)
    silent = cluster.primary(0)
    cluster.down.add(silent)
    cluster.submit(next(o for o in cluster.ids if o != silent), [b"ok:rec:3"])
    cluster.advance(10.0)
    messages = tuple(
        a.message.SerializeToString()
        for _, actions in cluster.log
        for a in actions
        if isinstance(a, Send | Broadcast)
    )
    durable = {
        oid: (dict(node.records), list(node.blocks), list(node.seeds))
        for oid, node in cluster.nodes.items()
    }
    return Recording(messages, durable)


def resumed() -> Cluster:
    cluster = Cluster()
    for oid, (records, blocks, seeds) in recorded().durable.items():
        node = cluster.nodes[oid]
        node.records, node.blocks, node.seeds = dict(records), list(blocks), list(seeds)
        cluster.restart(oid)
    cluster.deliver_all()
    return cluster


def _mutate(msg: Message, data: st.DataObject, depth: int = 0) -> None:
    for field in msg.DESCRIPTOR.fields:
        if not data.draw(st.booleans(), label=f"touch {field.name}"):
            continue
        if field.is_repeated:
            values = getattr(msg, field.name)
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                for item in values:
                    if depth < 4:
                        _mutate(item, data, depth + 1)
            elif field.type == FieldDescriptor.TYPE_BYTES and data.draw(st.booleans()):
                values.append(data.draw(st.binary(max_size=64)))
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth < 4:
                _mutate(getattr(msg, field.name), data, depth + 1)
        elif field.type in _EXTREMES:
            setattr(msg, field.name, data.draw(st.sampled_from(_EXTREMES[field.type])))
        elif field.type == FieldDescriptor.TYPE_BYTES:
            setattr(msg, field.name, data.draw(st.binary(max_size=48)))
        elif field.type == FieldDescriptor.TYPE_STRING:
            setattr(msg, field.name, data.draw(st.sampled_from(["o0", "o1", "o2", "o3", "x"])))
        elif field.type == FieldDescriptor.TYPE_BOOL:
            setattr(msg, field.name, data.draw(st.booleans()))


def _input(data: st.DataObject) -> consensus_pb2.ConsensusMessage | None:
    how = data.draw(st.sampled_from(["random", "replay", "mutate", "flip"]))
    if how == "random":
        raw = data.draw(st.binary(max_size=300))
    else:
        raw = data.draw(st.sampled_from(recorded().messages))
        if how == "flip" and raw:
            i = data.draw(st.integers(0, len(raw) - 1))
            raw = raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255))]) + raw[i + 1 :]
    try:
        msg = consensus_pb2.ConsensusMessage.FromString(raw)
    except DecodeError:
        return None  # the transport drops what does not parse
    if how == "mutate":
        _mutate(msg, data)
    return msg


_SECONDS = [0, 1, 10**9, 253_402_300_799, 253_402_300_800, -62_135_596_801, 1 << 40, -(1 << 40)]
_NANOS = [0, 1, 999_999_999, 1_000_000_000, -1, (1 << 31) - 1]


def _signed(data: st.DataObject, cluster: Cluster, target: str) -> tuple[str, Message]:
    """A message signed with a real orderer key, as a byzantine orderer can send: pre-blocks
    with any time stamp or round, round changes and votes with extreme rounds."""
    replica = cluster.nodes[target].replica
    u32 = st.sampled_from(_EXTREMES[FieldDescriptor.TYPE_UINT32])
    kind = data.draw(st.sampled_from(["proposal", "round_change", "vote"]))
    if kind == "proposal":
        round_ = data.draw(st.one_of(st.integers(0, 3), u32), label="header round")
        height = replica.height
        proposer = lottery.primary(cluster.ids, replica.previous_seed, height, round_)
        txs = data.draw(st.lists(st.sampled_from([b"ok:s1", b"ok:s2", b"bad:s"]), max_size=2))
        header = block_pb2.BlockHeader(
            number=height,
            previous_hash=replica.previous_hash,
            data_hash=data_hash(txs),
            round=round_,
            proposer=proposer,
            vrf_proof=cluster.crypto.vrf_prover(proposer)(
                lottery.alpha(replica.previous_seed, height)
            ),
        )
        header.timestamp.seconds = data.draw(st.sampled_from(_SECONDS), label="seconds")
        header.timestamp.nanos = data.draw(st.sampled_from(_NANOS), label="nanos")
        raw = header.SerializeToString()
        block = block_pb2.Block(header=raw, transactions=txs)
        block.metadata.proposer_signature = cluster.crypto.signer(proposer)(
            signing_bytes(Phase.PROPOSAL, height, round_, block_hash(raw))
        )
        outer = data.draw(st.one_of(st.just(round_), u32), label="proposal round")
        proposal = consensus_pb2.Proposal(height=height, round=outer, block=block)
        return proposer, consensus_pb2.ConsensusMessage(proposal=proposal)
    sender = data.draw(st.sampled_from(cluster.ids), label="signer")
    round_ = data.draw(u32, label="round")
    if kind == "round_change":
        return sender, cluster.round_change(sender, replica.height, round_)
    phase = data.draw(st.sampled_from([Phase.PREPARE, Phase.COMMIT]))
    bh = data.draw(st.binary(min_size=32, max_size=32))
    sig = cluster.crypto.signer(sender)(signing_bytes(phase, replica.height, round_, bh))
    vote = consensus_pb2.Vote(
        height=replica.height, round=round_, phase=int(phase), block_hash=bh, signature=sig
    )
    return sender, consensus_pb2.ConsensusMessage(vote=vote)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_arbitrary_inputs_never_raise_and_the_cluster_still_commits(data: st.DataObject) -> None:
    cluster = resumed()
    start = {len(node.blocks) for node in cluster.nodes.values()}
    assert start == {2}
    senders = [*cluster.ids, "stranger"]
    for _ in range(data.draw(st.integers(1, 25), label="inputs")):
        target = data.draw(st.sampled_from(cluster.ids), label="target")
        replica = cluster.nodes[target].replica
        kind = data.draw(st.sampled_from(["message"] * 8 + ["txs", "timer"]))
        if kind == "txs":
            txs = data.draw(st.lists(st.binary(max_size=40), max_size=3))
            cluster.apply(target, replica.on_transactions(txs, cluster.now))
        elif kind == "timer":
            name = data.draw(st.sampled_from(["round", "batch", "other"]))
            cluster.apply(target, replica.on_timer(name, cluster.now))
        elif data.draw(st.booleans(), label="signed by a real key"):
            sender, msg = _signed(data, cluster, target)
            if sender != target:
                cluster.apply(target, replica.on_message(sender, msg, cluster.now))
        else:
            msg = _input(data)
            if msg is not None:
                sender = data.draw(st.sampled_from(senders), label="sender")
                cluster.apply(target, replica.on_message(sender, msg, cluster.now))
        cluster.deliver_all()
        cluster.now += data.draw(st.sampled_from([0.0, 0.01, 0.3]))
    # Afterwards the network is honest again: a fresh transaction becomes final everywhere.
    cluster.submit("o2", [b"ok:after-the-storm"])
    cluster.advance(120.0)
    tips = set()
    for node in cluster.nodes.values():
        final = [tx for blk in node.blocks for tx in blk.transactions]
        assert b"ok:after-the-storm" in final, f"{node.oid} at height {node.replica.height}"
        tips.add(block_hash(node.blocks[-1].header))
    heights = {len(node.blocks) for node in cluster.nodes.values()}
    assert len(heights) == 1 and len(tips) == 1
