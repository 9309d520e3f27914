"""Everything a client or a peer can make an orderer hold is bounded: a transaction's size
(genesis limits.max_tx_bytes), the bytes waiting for the consensus thread (clients refused
with RESOURCE_EXHAUSTED, peer messages dropped), the pool's bytes, each peer's outgoing
queue, each peer's inbound rate, the verdict cache, and concurrent streams per kind and
client."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_helpers import Aborted, FakeContext
from orderer_helpers import Orderer, readings
from signed_blocks import wait_for

from gridledger.common.v1 import block_pb2
from gridledger.orderer.v1 import consensus_pb2, orderer_pb2
from gridledger_core.consensus.actions import Deliver
from gridledger_core.genesis import Genesis
from gridledger_core.identity import Role
from gridledger_core.rpc import authz
from gridledger_core.rpc.peer_identity import Peer, PeerIdentities
from gridledger_orderer import inbox as inbox_module
from gridledger_orderer import node as node_module
from gridledger_orderer import transport
from gridledger_orderer.inbox import Inbox, Submission
from gridledger_orderer.limits import OrdererLimits, PeerBudget, StreamSlots, TokenBucket
from gridledger_orderer.service import ConsensusServicer
from gridledger_orderer.store import tx_id_of
from gridledger_orderer.transport import PeerLink


class Context(FakeContext):
    """A call's context as the gRPC server gives it: the caller's TLS identity."""

    def __init__(self, common_name: str = "endorser-1", pem: bytes = b"") -> None:
        self._auth = {"x509_common_name": [common_name.encode()],
                      "x509_pem_cert": [pem] if pem else []}

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def is_active(self) -> bool:
        return True


def oversized(tx: bytes, size: int) -> bytes:
    """The same validly endorsed transaction, made `size` bytes long by an unknown field
    (it still decodes, its signatures still verify)."""
    for length_bytes in range(1, 6):
        padding = size - len(tx) - 1 - length_bytes
        if len(_varint(padding)) == length_bytes:
            return tx + bytes([15 << 3 | 2]) + _varint(padding) + b"x" * padding
    raise ValueError(size)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def make(consortium_dir: Path, genesis: Genesis, tmp_path: Path, **limits: int) -> Orderer:
    return Orderer(consortium_dir, genesis, tmp_path / "orderer", OrdererLimits(**limits))


@pytest.fixture
def orderer(consortium_dir: Path, genesis: Genesis, tmp_path: Path) -> Iterator[Orderer]:
    orderer = make(consortium_dir, genesis, tmp_path)
    yield orderer
    orderer.store.close()


# -- transaction size --------------------------------------------------------------------

def test_broadcast_refuses_a_transaction_above_the_genesis_limit(
        orderer: Orderer, consortium_dir: Path, genesis: Genesis) -> None:
    limit = genesis.limits.max_tx_bytes
    big = oversized(readings(consortium_dir, 1)[0], limit + 1)
    assert tx_id_of(big)  # decodable and endorsed: only its size is wrong
    with pytest.raises(Aborted) as refused:
        orderer.api.Broadcast(orderer_pb2.BroadcastRequest(endorsed_transaction=big),
                              FakeContext())  # type: ignore[arg-type]
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details == (f"MALFORMED: transaction is {limit + 1} bytes; the limit "
                                     f"is {limit} bytes (genesis limits.max_tx_bytes)")
    assert orderer.admitted() == [] and big not in orderer.node._seen


def test_broadcast_batch_refuses_only_the_oversized_transaction(
        orderer: Orderer, consortium_dir: Path, genesis: Genesis) -> None:
    txs = readings(consortium_dir, 3)
    big = oversized(txs[1], genesis.limits.max_tx_bytes + 100)
    results = orderer.batch([txs[0], big, txs[2]])
    assert [r.code for r in results] == [0, grpc.StatusCode.INVALID_ARGUMENT.value[0], 0]
    assert results[1].tx_id == tx_id_of(txs[1])
    assert "the limit is" in results[1].message
    assert orderer.admitted() == [txs[0], txs[2]]


def test_oversized_transactions_from_peers_are_not_pooled_or_voted_for(
        orderer: Orderer, consortium_dir: Path, genesis: Genesis) -> None:
    tx = readings(consortium_dir, 1)[0]
    big = oversized(tx, genesis.limits.max_tx_bytes + 1)
    replica = orderer.node.replica
    forward = consensus_pb2.ConsensusMessage(tx_forward=consensus_pb2.TxForward(
        transactions=[big]))
    replica.on_message("orderer-2", forward, 0.0)
    assert replica.pending_transactions == 0
    # A proposal's transactions go through the same check (`validate_tx`).
    assert str(orderer.node._validate_tx(big)).startswith("MALFORMED: transaction is")
    assert orderer.node._validate_tx(tx) is True


# -- bytes waiting for the consensus thread, and in the pool ------------------------------

def test_clients_beyond_the_inbox_budget_get_resource_exhausted(
        consortium_dir: Path, genesis: Genesis, tmp_path: Path) -> None:
    txs = readings(consortium_dir, 3)
    orderer = make(consortium_dir, genesis, tmp_path, inbox_client_bytes=len(txs[0]) + 10)
    try:
        first = threading.Thread(target=orderer.api.Broadcast, args=(
            orderer_pb2.BroadcastRequest(endorsed_transaction=txs[0]), FakeContext()))
        first.start()  # waits in the inbox: the loop has not run
        while orderer.node._inbox.client_bytes() == 0:
            first.join(0.001)
        context = FakeContext()
        with pytest.raises(Aborted) as refused:
            orderer.api.Broadcast(orderer_pb2.BroadcastRequest(endorsed_transaction=txs[1]),
                                  context)  # type: ignore[arg-type]
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert context.trailers == (("retry-after-ms", "50"),)
        orderer.pump()  # the loop takes the first: room again
        first.join()
        assert [r.code for r in orderer.batch(txs[1:2])] == [0]
    finally:
        orderer.store.close()


def test_peer_messages_beyond_their_budget_are_dropped(
        consortium_dir: Path, genesis: Genesis, tmp_path: Path) -> None:
    orderer = make(consortium_dir, genesis, tmp_path, inbox_peer_bytes=1000)
    try:
        vote = consensus_pb2.ConsensusMessage(vote=consensus_pb2.Vote(height=1))
        taken = [orderer.node.receive("orderer-2", vote, 400) for _ in range(3)]
        assert taken == [True, True, False]
        assert orderer.node.receive("orderer-3", vote, 400)  # its own budget
        # With nothing queued, one message larger than the budget still passes (a large
        # SyncResponse must not be refused forever); the next one waits for room.
        assert orderer.node.receive("orderer-4", vote, 5000)
        assert not orderer.node.receive("orderer-4", vote, 1)
    finally:
        orderer.store.close()


def test_the_pool_is_bounded_in_bytes(consortium_dir: Path, genesis: Genesis,
                                      tmp_path: Path) -> None:
    txs = readings(consortium_dir, 4)
    orderer = make(consortium_dir, genesis, tmp_path, pool_bytes=len(txs[0]) * 4 + 10)
    try:
        results = orderer.batch(txs[:3])  # one member alone: half the pool's bytes
        assert [r.code for r in results] == [0, 0, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]]
        forward = consensus_pb2.ConsensusMessage(tx_forward=consensus_pb2.TxForward(
            transactions=txs[1:4]))  # a peer's forward fits only the whole pool's bound
        assert not orderer.node.receive("orderer-2", forward, forward.ByteSize())
    finally:
        orderer.store.close()


def test_refused_bytes_are_never_kept_by_the_verdict_cache(
        orderer: Orderer, consortium_dir: Path) -> None:
    """Garbage and decodable but refused transactions (here: not endorsed), from clients and
    in peers' forwards, leave nothing in the cache (a flood of them once left 64 MiB there
    for good); an admitted transaction stays until it is final."""
    unendorsed = readings(consortium_dir, 20, endorser=None)
    for i, raw in enumerate(unendorsed):
        garbage = i.to_bytes(4, "big") + b"\xff" * 100_000  # just under the size limit
        for bad in (garbage, raw):
            with pytest.raises(Aborted):
                orderer.api.Broadcast(orderer_pb2.BroadcastRequest(endorsed_transaction=bad),
                                      FakeContext())  # type: ignore[arg-type]
    orderer.node.replica.on_message("orderer-2", consensus_pb2.ConsensusMessage(
        tx_forward=consensus_pb2.TxForward(transactions=[*unendorsed, b"\xfe" * 100_000])), 0.0)
    assert orderer.node.replica.pending_transactions == 0
    assert orderer.node._seen == {} and orderer.node._seen_bytes == 0
    tx = readings(consortium_dir, 1, first=99)[0]
    assert [r.code for r in orderer.batch([tx])] == [0]
    assert list(orderer.node._seen) == [tx] and orderer.node._seen_bytes == len(tx)


def test_admitted_transactions_never_grow_the_verdict_cache_past_its_bytes(
        orderer: Orderer, consortium_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    txs = readings(consortium_dir, 40)
    monkeypatch.setattr(node_module, "_SEEN_BYTES", len(txs[0]) * 10)
    for tx in txs:
        assert orderer.node.admit(tx) is None
        assert orderer.node._seen_bytes <= len(txs[0]) * 10
        assert sum(map(len, orderer.node._seen)) == orderer.node._seen_bytes


def test_the_loop_takes_waiting_submissions_in_groups_bounded_in_bytes() -> None:
    """All waiting calls are written together, but a group is forwarded to the peers as one
    TxForward, so it stays below their receive limit."""
    inbox = Inbox(client_bytes=100 << 20, peer_bytes=1 << 20)
    for _ in range(5):
        assert inbox.put_submission(Submission([b"x" * (3 << 20)]))
    groups = []
    while (group := inbox.get(0.0, max_bytes=8 << 20)) is not None:
        groups.append(len(group))  # type: ignore[arg-type]
    assert groups == [2, 2, 1]
    inbox.close()
    assert not inbox.put_submission(Submission([b"x"]))  # stopping: refused at once


# -- outgoing queues ----------------------------------------------------------------------

def test_a_peer_queue_is_bounded_in_bytes() -> None:
    link = PeerLink("orderer-2", "127.0.0.1:1", None, capacity_bytes=10_000)  # type: ignore[arg-type]
    message = consensus_pb2.ConsensusMessage(tx_forward=consensus_pb2.TxForward(
        transactions=[b"x" * 3000]))
    for _ in range(10):
        link.send(message)
    assert link.queued_bytes <= 10_000
    assert link.queued_bytes >= 3 * message.ByteSize()  # the newest are kept
    link.send(consensus_pb2.ConsensusMessage(tx_forward=consensus_pb2.TxForward(
        transactions=[b"x" * 20_000])))  # larger than the whole budget: dropped alone
    assert link.queued_bytes >= 3 * message.ByteSize()


def test_a_peer_link_outlives_a_failure_to_open_its_channel(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening a link's channel reads the TLS files; an OSError there (out of descriptors, a
    certificate being replaced) ended the link's thread for good, cutting this orderer off
    from the peer behind SERVING. It is logged and the link opened again."""
    attempts: list[str] = []

    def failing_channel(address: str, _tls: object) -> object:
        attempts.append(address)
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(transport, "secure_channel", failing_channel)
    link = PeerLink("orderer-2", "127.0.0.1:1", None)  # type: ignore[arg-type]
    link.start()
    try:
        wait_for(lambda: len(attempts) >= 3, "the link opened again after failures",
                 timeout=10)
        assert link._thread.is_alive()
    finally:
        link.stop()
    assert not link._thread.is_alive()


def _written(link: PeerLink, count: int) -> list[str]:
    """What the link's stream would write next, as 'vote <height>' or 'forward'."""
    out = []
    for request in itertools.islice(link._requests(), count):
        body = request.message.WhichOneof("body")
        out.append(f"vote {request.message.vote.height}" if body == "vote" else "forward")
    return out


def test_a_vote_is_written_before_forwards_queued_ahead_of_it() -> None:
    """A burst of transaction forwards (megabytes on a slow stream) must not hold back this
    orderer's vote: the outgoing queue keeps the inbox's classes. Forwards still flow: one
    after every BULK_EVERY urgent messages."""
    link = PeerLink("orderer-2", "127.0.0.1:1", None)  # type: ignore[arg-type]
    for _ in range(3):
        link.send(_forward(0, 3000))
    for height in range(1, 7):
        link.send(_vote(height))
    assert _written(link, 9) == ["vote 1", "vote 2", "vote 3", "vote 4", "forward",
                                 "vote 5", "vote 6", "forward", "forward"]
    assert link.queued_bytes == 0


def test_forwards_filling_the_queue_do_not_push_a_vote_out() -> None:
    link = PeerLink("orderer-2", "127.0.0.1:1", None, capacity_bytes=10_000)  # type: ignore[arg-type]
    link.send(_vote(7))
    for _ in range(10):  # 30 KB of forwards into a 10 KB queue: the oldest forwards go
        link.send(_forward(0, 3000))
    assert link.queued_bytes <= 10_000
    assert _written(link, 1) == ["vote 7"]
    assert _written(link, 3) == ["forward"] * 3  # the newest three forwards were kept
    for _ in range(3):
        link.send(_forward(0, 3000))
    # An urgent message that does not fit pushes out the oldest forward, never the reverse.
    big_vote = _vote(8)
    big_vote.vote.block_hash = b"h" * 2000
    link.send(big_vote)
    assert _written(link, 3) == ["vote 8", "forward", "forward"]
    assert link.queued_bytes == 0


# -- inbound rate, concurrent streams ------------------------------------------------------

def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=100, burst=200, clock=lambda: now[0])
    assert bucket.take(150) and not bucket.take(100)
    now[0] = 0.5
    assert bucket.take(100) and not bucket.take(1)
    now[0] = 100.0
    assert bucket.take(200) and not bucket.take(1)  # never more than the burst


def test_stream_slots_per_identity_and_in_total() -> None:
    slots = StreamSlots(total=3, per_identity=2)
    assert slots.acquire("a") and slots.acquire("a") and not slots.acquire("a")
    assert slots.acquire("b") and not slots.acquire("c")
    slots.release("a")
    assert slots.acquire("c") and slots.in_use == 3


def test_stream_slots_per_member() -> None:
    slots = StreamSlots(total=4, per_identity=2, per_member=2)
    assert slots.acquire("a", "m") and slots.acquire("b", "m")
    assert not slots.acquire("c", "m")  # another certificate of the same member
    assert slots.acquire("d", "n") and slots.acquire("d", "n") and not slots.acquire("e", "n")
    slots.release("a", "m")
    slots.release("a", "m")  # not held any more: nothing to release
    assert slots.acquire("c", "m") and slots.in_use == 4


def _follower_streams(orderer: Orderer) -> Callable[[Peer], Iterator[orderer_pb2.DeliverResponse]]:
    """Give the orderer block 0 and return `open_stream(peer)`: a following Deliver stream
    called as `peer` (as the authorisation interceptor would have verified it), holding its
    slot once it has sent the first block."""
    header = block_pb2.BlockHeader(number=0).SerializeToString()
    orderer.store.apply([Deliver(block_pb2.Block(header=header), b"seed")])
    request = orderer_pb2.DeliverRequest(start_number=0, follow=True)

    def open_stream(peer: Peer) -> Iterator[orderer_pb2.DeliverResponse]:
        token = authz._CALLER.set(peer)
        try:
            stream = orderer.api.Deliver(request, Context(peer.name))  # type: ignore[arg-type]
            next(stream)  # holds its slot from here on
        finally:
            authz._CALLER.reset(token)
        return stream

    return open_stream


def test_a_deliver_stream_ends_after_its_limit(consortium_dir: Path, genesis: Genesis,
                                               tmp_path: Path) -> None:
    """`limit` bounds what one Deliver sends (a probe asking whether one block is final gets
    that block, not every block to the tip); 0 is no limit; a following stream with a limit
    ends at it instead of waiting for more."""
    orderer = make(consortium_dir, genesis, tmp_path)
    for number in range(3):
        header = block_pb2.BlockHeader(number=number).SerializeToString()
        orderer.store.apply([Deliver(block_pb2.Block(header=header), b"seed")])
    peer = Peer("committer-1", "gridops", Role.COMMITTER)

    def numbers(**request: int | bool) -> list[int]:
        token = authz._CALLER.set(peer)
        try:
            stream = orderer.api.Deliver(orderer_pb2.DeliverRequest(**request),  # type: ignore[arg-type]
                                         Context(peer.name))
            return [block_pb2.BlockHeader.FromString(r.block.header).number for r in stream]
        finally:
            authz._CALLER.reset(token)

    assert numbers(start_number=1, limit=1) == [1]
    assert numbers(start_number=0) == [0, 1, 2]
    assert numbers(start_number=1, limit=5) == [1, 2]
    assert numbers(start_number=0, follow=True, limit=2) == [0, 1]


def test_one_members_certificates_cannot_take_every_deliver_stream(
        consortium_dir: Path, genesis: Genesis, tmp_path: Path) -> None:
    """Tried as a hostile member would: its CA issues client certificates to three admin
    accounts (each within the per-client cap) and opens as many Deliver streams as the
    orderer takes. Before, they took the total and another member's committer was refused
    its one follower stream."""
    orderer = make(consortium_dir, genesis, tmp_path, deliver_streams=12,
                   deliver_streams_per_client=2, deliver_streams_per_member=3)
    open_stream = _follower_streams(orderer)

    hostile = [Peer(f"utility-admin-{i}", "utility", Role.ADMIN) for i in range(3)]
    streams = []
    try:
        refused = 0
        for peer in hostile:
            for _ in range(2):
                try:
                    streams.append(open_stream(peer))
                except Aborted as exc:
                    assert exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert "organisation utility" in exc.details
                    refused += 1
        assert (len(streams), refused) == (3, 3)
        streams.append(open_stream(Peer("committer-1", "gridops", Role.COMMITTER)))
    finally:
        for stream in streams:
            stream.close()
        orderer.store.close()


def test_a_member_holds_no_more_than_its_share_of_the_deliver_streams(
        consortium_dir: Path, genesis: Genesis, tmp_path: Path) -> None:
    """Tried as a hostile member would, with the default limits: its CA issues four client
    accounts and they open every Deliver stream the orderer grants them. Before, a member
    could hold 8 of the 16 streams whatever the consortium's size, so with four members the
    last ones to come were refused the streams of their own share (16 / 4)."""
    orderer = make(consortium_dir, genesis, tmp_path)
    open_stream = _follower_streams(orderer)
    limits = OrdererLimits()
    share = limits.deliver_streams // len(genesis.organizations)
    assert share < limits.deliver_streams_per_member  # the configured cap alone is not enough

    streams = []
    try:
        for i in range(4):
            peer = Peer(f"utility-reader-{i}", "utility", Role.ADMIN)
            for _ in range(limits.deliver_streams_per_client):
                try:
                    streams.append(open_stream(peer))
                except Aborted as exc:
                    assert exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(streams) == share
        for org in sorted({o.name for o in genesis.organizations} - {"utility"}):
            reader = Peer(f"{org}-reader", org, Role.ADMIN)
            streams.extend(open_stream(reader) for _ in range(share))  # none refused
        assert len(streams) == limits.deliver_streams
    finally:
        for stream in streams:
            stream.close()
        orderer.store.close()


def test_member_cap_is_an_equal_share_at_most(caplog: pytest.LogCaptureFixture) -> None:
    limits = OrdererLimits()
    assert limits.member_cap(16, 8, members=4) == 4
    assert limits.member_cap(16, 8, members=1) == 8  # the configured cap still holds
    assert limits.member_cap(16, 8, members=40) == 1  # every member may still follow
    limits.warn_if_short(4)
    assert not caplog.records
    limits.warn_if_short(40)  # the shares no longer add up to the totals: the operator hears
    assert [r.getMessage().split()[0] for r in caplog.records] == ["--deliver-streams",
                                                                   "--broadcast-calls"]


def test_deliver_streams_are_capped_per_client_per_member_and_in_total(
        consortium_dir: Path, genesis: Genesis, tmp_path: Path) -> None:
    orderer = make(consortium_dir, genesis, tmp_path, deliver_streams=12,
                   deliver_streams_per_client=2)  # 3 per member: 12 / 4 members
    open_peer_stream = _follower_streams(orderer)

    def open_stream(client: str, org: str) -> Iterator[orderer_pb2.DeliverResponse]:
        return open_peer_stream(Peer(client, org, Role.COMMITTER))

    try:
        streams = [open_stream("committer-1", "gridops"), open_stream("committer-1", "gridops")]
        with pytest.raises(Aborted) as refused:
            open_stream("committer-1", "gridops")  # the client's cap (its member has room)
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        streams.append(open_stream("admin", "gridops"))
        with pytest.raises(Aborted):
            open_stream("endorser-1", "gridops")  # the member's share
        for client, org in (("committer-2", "utility"), ("meter-1", "community"),
                            ("plant-1", "solarco")):
            streams += [open_stream(client, org), open_stream(client, org),
                        open_stream(f"{client}-b", org)]
        with pytest.raises(Aborted):
            open_stream("committer-5", "newco")  # the total
        streams.pop(0).close()  # a follower leaves: its slot is free again
        streams.append(open_stream("committer-5", "newco"))
    finally:
        orderer.store.close()


_EXCHANGE = "/gridledger.orderer.v1.ConsensusService/Exchange"


def _exchange_as_verified_peer(servicer: ConsensusServicer, genesis: Genesis, pem: bytes,
                               requests: Iterator[consensus_pb2.ExchangeRequest]) -> None:
    """Call Exchange as the authorisation interceptor would: with its verdict on the caller's
    pinned certificate in the call's context (the servicer trusts only that verdict)."""
    identities = PeerIdentities(genesis)
    peer = authz.judge_subject(identities, _EXCHANGE,
                               authz.caller_subject(identities, _EXCHANGE, pem))
    token = authz._CALLER.set(peer)
    try:
        servicer.Exchange(requests, Context(peer.name, pem))  # type: ignore[arg-type]
    finally:
        authz._CALLER.reset(token)


def test_exchange_drops_a_peer_above_its_rate_and_caps_its_streams(
        consortium_dir: Path, genesis: Genesis, tmp_path: Path) -> None:
    orderer = make(consortium_dir, genesis, tmp_path, peer_burst_messages=5,
                   peer_messages_per_second=0.001, exchange_streams_per_peer=1)
    try:
        servicer = ConsensusServicer(orderer.node, genesis)
        pem = (consortium_dir / "nodes" / "orderer-2" / "tls.pem").read_bytes()
        vote = consensus_pb2.ExchangeRequest(message=consensus_pb2.ConsensusMessage(
            vote=consensus_pb2.Vote(height=1)))
        _exchange_as_verified_peer(servicer, genesis, pem, iter([vote] * 50))
        assert _inbox_messages(orderer) == 5  # the burst; the rest dropped and counted
        assert _dropped("orderer-2", "rate") >= 45

        release = threading.Event()

        def held() -> Iterator[consensus_pb2.ExchangeRequest]:
            release.wait(10)
            yield from ()

        first = threading.Thread(target=_exchange_as_verified_peer,
                                 args=(servicer, genesis, pem, held()))
        first.start()
        while servicer._streams.in_use == 0:
            first.join(0.001)
        with pytest.raises(Aborted) as refused:
            _exchange_as_verified_peer(servicer, genesis, pem, iter([]))
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        release.set()
        first.join()
    finally:
        orderer.store.close()


def _inbox_messages(orderer: Orderer) -> int:
    count = 0
    while isinstance(orderer.node._inbox.get(0.0), tuple):
        count += 1
    return count


def _dropped(peer: str, reason: str) -> float:
    return node_module.INBOUND_DROPPED.labels(peer, reason)._value.get()


def test_peer_budget_counts_bytes_and_messages() -> None:
    now = [0.0]
    budget = PeerBudget(OrdererLimits(peer_bytes_per_second=1000, peer_burst_bytes=1000,
                                      peer_messages_per_second=1000,
                                      peer_burst_messages=1000), clock=lambda: now[0])
    assert budget.admit(600) and not budget.admit(600) and budget.admit(400)


def _forward(n: int, size: int = 100) -> consensus_pb2.ConsensusMessage:
    return consensus_pb2.ConsensusMessage(tx_forward=consensus_pb2.TxForward(
        transactions=[bytes([n]) * size]))


def _vote(n: int) -> consensus_pb2.ConsensusMessage:
    return consensus_pb2.ConsensusMessage(vote=consensus_pb2.Vote(height=n))


def _taken(inbox: Inbox) -> list[tuple[str, int]]:
    out = []
    while (item := inbox.get(0.0)) is not None:
        _, message = item  # type: ignore[misc]
        kind = message.WhichOneof("body")
        out.append((kind, message.vote.height if kind == "vote" else
                    message.tx_forward.transactions[0][0]))
    return out


def test_votes_are_not_held_behind_a_peers_flood_of_forwards() -> None:
    """A byzantine orderer fills its byte budget with forwards; an honest vote that arrives
    after them is taken next, not after the whole flood (it was, FIFO across peers)."""
    inbox = Inbox(client_bytes=1 << 20, peer_bytes=1 << 20)
    for n in range(50):
        assert inbox.put_message("orderer-4", _forward(n), 200)
    assert inbox.put_message("orderer-2", _vote(7), 50)
    assert _taken(inbox)[0] == ("vote", 7)


def test_forwards_still_flow_under_a_stream_of_consensus_messages() -> None:
    inbox = Inbox(client_bytes=1 << 20, peer_bytes=1 << 20)
    for n in range(3):
        assert inbox.put_message("orderer-2", _forward(n), 200)
    for n in range(12):
        assert inbox.put_message("orderer-3", _vote(n), 50)
    taken = _taken(inbox)
    # Each class keeps its order, and a forward is taken after every BULK_EVERY urgent ones.
    assert [m for m in taken if m[0] == "vote"] == [("vote", n) for n in range(12)]
    assert [m for m in taken if m[0] == "tx_forward"] == [("tx_forward", n) for n in range(3)]
    every = inbox_module.BULK_EVERY
    assert [i for i, m in enumerate(taken) if m[0] == "tx_forward"] == [
        every, 2 * every + 1, 3 * every + 2]


def test_a_peer_flooding_consensus_messages_delays_anothers_vote_by_one_of_its_own() -> None:
    """Priority alone is not enough: votes (or round changes) are in the urgent class, so a
    byzantine orderer flooding them would again hold back an honest vote. Peers take turns."""
    inbox = Inbox(client_bytes=1 << 20, peer_bytes=1 << 20)
    for n in range(50):
        assert inbox.put_message("orderer-4", _vote(100 + n), 50)
    assert inbox.put_message("orderer-2", _vote(7), 50)
    assert _taken(inbox).index(("vote", 7)) == 1


def test_peers_take_turns_among_forwards_too() -> None:
    inbox = Inbox(client_bytes=1 << 20, peer_bytes=1 << 20)
    for n in range(30):
        assert inbox.put_message("orderer-4", _forward(n), 200)
    assert inbox.put_message("orderer-2", _forward(99), 200)
    taken = _taken(inbox)
    assert taken.index(("tx_forward", 99)) == 1
    assert [m for m in taken if m != ("tx_forward", 99)] == [
        ("tx_forward", n) for n in range(30)]  # each peer's own messages keep their order


@pytest.mark.parametrize(("members", "orderers_per_member"), [(4, 2), (4, 1), (7, 1), (20, 1)])
def test_every_member_has_threads_for_its_caps_whatever_the_others_hold(
        members: int, orderers_per_member: int) -> None:
    """Each call holds a handler thread from its start (rpc/call_shares.py): a member's share
    of calls covers its Deliver streams and Broadcast calls at their member caps and its
    orderers' Exchange streams, and the threads cover every member's share at once."""
    limits = OrdererLimits()
    share = limits.member_calls(members, orderers_per_member)
    deliver = OrdererLimits.member_cap(limits.deliver_streams, limits.deliver_streams_per_member,
                                       members)
    broadcast = OrdererLimits.member_cap(limits.broadcast_calls,
                                         limits.broadcast_calls_per_member, members)
    assert share >= deliver + broadcast + limits.exchange_streams_per_peer * orderers_per_member
    assert limits.worker_threads(members, orderers_per_member) >= members * share
