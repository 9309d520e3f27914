"""Admission control: the in-flight bound follows the measured commit rate (budget x rate,
between floor and ceiling), refuses beyond it with a retry hint, frees a slot on commit or on
a failed forward, never lets a forged claim free a real transaction's slot; and in the real
servicer, a refusal is RESOURCE_EXHAUSTED with `retry-after-ms` while everything it
acknowledged is forwarded and commits. Time is an injected clock: nothing here waits."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from broadcast_fakes import SealsThenBroadcasts
from grpc_helpers import Aborted, FakeContext
from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_helpers import ChainBuilder, identity, past_interval, reading

from gridledger.common.v1 import block_pb2, envelope_pb2
from gridledger.endorser.v1 import endorser_pb2
from gridledger.orderer.v1 import orderer_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.identity import Role
from gridledger_core.ledger.errors import Code
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.rpc import authz
from gridledger_core.rpc.congestion import SLOW_ANSWER
from gridledger_core.rpc.latency_budget import DEFAULT_LATENCY_BUDGET_MS
from gridledger_core.rpc.peer_identity import Peer
from gridledger_core.signing_identity import SigningIdentity
from gridledger_core.storage import MemoryStore
from gridledger_endorser.admission import (
    MIN_RETRY_MS,
    Admission,
    AdmissionConfig,
    Admitted,
    Full,
)
from gridledger_endorser.service import EndorserServicer

T = TypeVar("T")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def admission(clock: Clock, **config: float) -> Admission:
    return Admission(AdmissionConfig(**config), clock)  # type: ignore[arg-type]


def put_in_flight(a: Admission, ids: list[str]) -> None:
    """As if admitted earlier, whatever the bound is now."""
    for tx_id in ids:
        a._in_flight[tx_id] = (a._clock(), "")
        a._held[""] += 1


def test_capacity_is_budget_times_observed_rate_between_floor_and_ceiling() -> None:
    clock = Clock()
    a = admission(clock, budget_ms=2000, floor=10, ceiling=500, window_s=5.0)
    assert a.capacity() == 10  # nothing committed yet: the floor
    clock.now += 5
    ids = [f"t{i}" for i in range(10)]
    assert a.admit(ids) == [Admitted.NEW] * 10
    a.on_block(ids)  # 10 of ours in the last 5 s: 2/s, x 2 s = 4, below the floor
    assert a.capacity() == 10
    clock.now += 0.5  # those leave the window before the last of the next five blocks
    for block in range(1, 6):  # 5 blocks of 100 over 5 s: 100/s -> 200 in flight
        clock.now += 1
        ids = [f"b{block}-{i}" for i in range(100)]
        put_in_flight(a, ids)
        a.on_block(ids)
    assert a.capacity() == 200
    for i in range(3):
        ids = [f"c{i}-{j}" for j in range(1000)]
        put_in_flight(a, ids)
        a.on_block(ids)
    assert a.capacity() == 500  # the ceiling


def _saturated_blocks(a: Admission, clock: Clock, per_block: int, blocks: int,
                     tag: str) -> None:
    """One block a second of `per_block` of ours, the endorser held at its bound meanwhile
    (something more asked and refused), so its in-flight set never falls below half."""
    for block in range(blocks):
        clock.now += 1
        room = a.capacity() + per_block - a.in_flight
        if room > 0:
            put_in_flight(a, [f"{tag}-fill{block}-{i}" for i in range(room)])
        assert a.admit([f"{tag}-refused-{block}"]) == [Admitted.REFUSED]
        a.on_block(list(a._in_flight)[:per_block])
    clock.now += 0.5  # a window now holds exactly five of these blocks


def _drain(a: Admission, clock: Clock, per_block: int) -> None:
    """What is in flight commits at the same pace, and nothing more is asked."""
    while a.in_flight:
        clock.now += 1
        a.on_block(list(a._in_flight)[:per_block])


def _measured_100_per_s(clock: Clock, **config: float) -> Admission:
    a = admission(clock, budget_ms=2000, floor=10, ceiling=5000, window_s=5.0, **config)
    _saturated_blocks(a, clock, 100, 8, "load")
    assert a.capacity() == 200
    return a


def test_an_idle_endorser_keeps_the_capacity_it_measured() -> None:
    """Tried as a grid operator's burst would: the endorser measured 100 tx/s under load,
    then nothing was asked for a minute (a quiet hour before a gate closure); a burst of 150
    readings then arrives. An idle window measures demand, not capacity: the old estimate
    fell back to the floor (10) and refused 140 of them while the network stood idle."""
    clock = Clock()
    a = _measured_100_per_s(clock)
    _drain(a, clock, 100)
    clock.now += 60
    assert a.commit_rate() == 0 and a.capacity() == 200
    burst = [f"burst-{i}" for i in range(150)]
    assert a.admit(burst) == [Admitted.NEW] * 150


def test_a_trickle_or_a_lost_transaction_keeps_it_too() -> None:
    """Nearly idle is idle: two readings a second (never none in flight), or one
    acknowledged transaction an orderer lost (in flight until forgotten), measure demand.
    A bound that only an empty endorser kept would fall to the floor here, and a member
    could hold it there for the others by keeping one transaction in flight."""
    clock = Clock()
    a = _measured_100_per_s(clock, forget_after_s=600.0)
    _drain(a, clock, 100)
    put_in_flight(a, ["lost"])
    for second in range(60):
        clock.now += 1
        ids = [f"trickle{second}-{i}" for i in range(2)]
        assert a.admit(ids, member="") == [Admitted.NEW] * 2
        a.on_block([t for t in list(a._in_flight) if t != "lost"][:2])
        assert a.in_flight >= 1
    clock.now += 0.5
    assert a.commit_rate() == 2
    assert a.capacity() == 200


def test_a_network_slower_under_load_lowers_the_bound_within_a_window() -> None:
    clock = Clock()
    a = _measured_100_per_s(clock)
    _saturated_blocks(a, clock, 20, 6, "slow")  # an orderer lost: 20 of ours a second
    assert a.capacity() == 40  # 20/s x 2 s


def test_only_this_endorsers_transactions_count_toward_the_rate() -> None:
    clock = Clock()
    a = admission(clock, budget_ms=1000, floor=1, window_s=1.0)
    clock.now += 1
    a.on_block([f"others-{i}" for i in range(1000)])
    assert a.commit_rate() == 0
    assert a.capacity() == 1


def test_refuses_beyond_capacity_and_frees_on_commit_or_release() -> None:
    clock = Clock()
    a = admission(clock, budget_ms=1000, floor=2, ceiling=2)
    assert a.admit(["a", "b", "c"]) == [Admitted.NEW, Admitted.NEW, Admitted.REFUSED]
    assert a.admit(["a"]) == [Admitted.AGAIN]  # a retry of an in-flight tx: not counted twice
    assert a.in_flight == 2
    with pytest.raises(Full) as refused:
        a.check()
    assert "2 transactions in flight, capacity 2" in str(refused.value)
    a.release("b")  # not acknowledged: no longer in flight
    assert a.admit(["c"]) == [Admitted.NEW]
    a.on_block(["a", "x"])
    assert a.in_flight == 1
    a.check()


def test_an_acknowledged_tx_never_committed_stops_counting_after_forget_after() -> None:
    clock = Clock()
    a = admission(clock, budget_ms=1000, floor=1, ceiling=1, forget_after_s=60.0)
    assert a.admit(["lost"]) == [Admitted.NEW]
    clock.now += 59
    assert a.admit(["next"]) == [Admitted.REFUSED]
    clock.now += 2
    assert a.admit(["next"]) == [Admitted.NEW]


def test_retry_hint_is_half_the_budget_or_the_block_interval_within_bounds() -> None:
    clock = Clock()
    a = admission(clock, budget_ms=2000)
    assert a.retry_after_ms() == 1000  # no blocks seen yet: half the budget
    for _ in range(5):
        clock.now += 0.25
        a.on_block([])
    assert a.retry_after_ms() == 1000  # blocks come faster than that
    clock.now += 100
    a.on_block([])
    assert a.retry_after_ms() == 2000  # slow blocks: longer, but at most the budget
    assert admission(Clock(), budget_ms=10).retry_after_ms() == MIN_RETRY_MS
    assert admission(clock, budget_ms=0).capacity() == AdmissionConfig().ceiling  # off


# -- in the servicer ---------------------------------------------------------------------------

@dataclass
class Orderers(SealsThenBroadcasts):
    sent: list[bytes] = field(default_factory=list)

    def broadcast(self, endorsed_transaction: bytes, tx_id: str) -> orderer_pb2.BroadcastResponse:
        self.sent.append(endorsed_transaction)
        return orderer_pb2.BroadcastResponse(tx_id=tx_id)



def accept_proof(block: block_pb2.Block, header: block_pb2.BlockHeader,
                 previous: bytes | None) -> None:
    """Consensus proofs are tested with the consensus core."""


@dataclass
class Node:
    servicer: EndorserServicer
    ledger: Ledger
    orderers: Orderers
    admission: Admission
    meter: SigningIdentity
    chain: ChainBuilder = field(default_factory=ChainBuilder)

    def submit(self, envelope: envelope_pb2.SignedEnvelope) -> tuple[str, dict[str, str]]:
        context = FakeContext()
        try:
            self.servicer.SubmitTransaction(
                endorser_pb2.SubmitTransactionRequest(envelope=envelope), context)  # type: ignore[arg-type]
        except Aborted as exc:
            return exc.code.name, dict(getattr(context, "trailers", ()))
        return "OK", {}

    def commit_sent(self) -> list[int]:
        """Order what was forwarded into a block; the replica commits it (as the follower)."""
        result = self.ledger.commit(self.chain.block(self.orderers.sent))
        self.orderers.sent.clear()
        self.servicer.on_commit(result)
        return result.codes


@pytest.fixture()
def node(genesis: Genesis, consortium_dir: Path) -> Node:
    ledger = Ledger(MemoryStore(), genesis, accept_proof)
    orderers = Orderers()
    a = Admission(AdmissionConfig(budget_ms=1000, floor=2, ceiling=2), Clock())
    servicer = EndorserServicer(ledger, identity(consortium_dir, "endorser-1"), orderers,  # type: ignore[arg-type]
                                admission=a)
    return Node(servicer, ledger, orderers, a, identity(consortium_dir, "meter-1"))


def signed(meter: SigningIdentity, n: int) -> envelope_pb2.SignedEnvelope:
    return meter.new_transaction("meter_reading", reading(meter.name, past_interval(n)))


def test_full_endorser_refuses_at_once_with_a_hint_and_what_it_acked_commits(node: Node) -> None:
    first, second, third = (signed(node.meter, n) for n in (2, 3, 4))
    assert node.submit(first) == ("OK", {})
    assert node.submit(second) == ("OK", {})
    status, trailers = node.submit(third)
    assert status == "RESOURCE_EXHAUSTED"
    assert int(trailers["retry-after-ms"]) >= MIN_RETRY_MS
    assert len(node.orderers.sent) == 2  # the refused one did no work and went nowhere
    assert node.commit_sent() == [Code.TX_VALIDATION_CODE_VALID] * 2
    assert node.submit(third) == ("OK", {})  # slots freed by the commit
    assert node.commit_sent() == [Code.TX_VALIDATION_CODE_VALID]


def test_options_are_refused_while_full(node: Node, consortium_dir: Path) -> None:
    node.submit(signed(node.meter, 2))
    node.submit(signed(node.meter, 3))
    context = FakeContext()
    with pytest.raises(Aborted) as refused:
        node.servicer.RequestOptions(endorser_pb2.RequestOptionsRequest(
            request=envelope_pb2.SignedEnvelope(payload=b"")), context)  # type: ignore[arg-type]
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "retry-after-ms" in dict(context.trailers)


def test_a_forged_claim_of_an_in_flight_tx_id_frees_nothing(node: Node) -> None:
    genuine = signed(node.meter, 2)
    assert node.submit(genuine) == ("OK", {})
    forged = envelope_pb2.SignedEnvelope()
    forged.CopyFrom(genuine)
    forged.signature = bytes(64)  # claims the same tx id, but is not the meter's
    assert node.submit(forged)[0] == "UNAUTHENTICATED"
    assert node.admission.in_flight == 1  # the genuine one still counts
    assert node.submit(signed(node.meter, 3)) == ("OK", {})
    assert node.submit(signed(node.meter, 4))[0] == "RESOURCE_EXHAUSTED"


def test_an_invalid_transaction_does_not_keep_a_slot(node: Node) -> None:
    other = signed(node.meter, 2)
    other.signature = bytes(64)
    assert node.submit(other)[0] == "UNAUTHENTICATED"
    assert node.admission.in_flight == 0


# -- members share the bound -------------------------------------------------------------------

def test_a_member_below_its_share_enters_even_when_a_flooding_member_holds_the_bound() -> None:
    """Tried as a hostile member would: its head-end system fills the whole in-flight bound
    and retries every refusal at once. Another member still gets its share at once, and the
    flooding member gets back only what is idle."""
    a = admission(Clock(), budget_ms=1000, floor=10, ceiling=10)
    assert a.admit([f"f{i}" for i in range(12)], member="hostile") == (
        [Admitted.NEW] * 10 + [Admitted.REFUSED] * 2)  # alone: all the idle capacity
    assert a.admit([f"h{i}" for i in range(6)], member="honest") == (
        [Admitted.NEW] * 5 + [Admitted.REFUSED])  # its share of two: 5, over the bound
    assert a.in_flight == 15
    with pytest.raises(Full) as refused:
        a.check(member="hostile")
    assert "hostile holds 10, its fair share is 5" in str(refused.value)
    a.on_block([f"f{i}" for i in range(5)])  # the flood drains to its share: still refused
    assert a.admit(["f-next"], member="hostile") == [Admitted.REFUSED]
    a.on_block([f"h{i}" for i in range(5)])  # the honest member is done: idle is lent again
    assert a.admit([f"g{i}" for i in range(6)], member="hostile") == (
        [Admitted.NEW] * 5 + [Admitted.REFUSED])
    a.check(member="honest")  # below its share: options too


def test_a_members_retry_of_an_in_flight_tx_passes_and_its_slots_free_on_commit() -> None:
    a = admission(Clock(), budget_ms=1000, floor=4, ceiling=4)
    assert a.admit(["x", "y"], member="m") == [Admitted.NEW] * 2
    assert a.admit(["x"], member="other") == [Admitted.AGAIN]  # counted once, for m
    assert (a.held_by("m"), a.held_by("other")) == (2, 0)
    a.release("x")
    a.on_block(["y"])
    assert (a.held_by("m"), a.in_flight) == (0, 0)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 12),
                                st.floats(0, 1)), max_size=40),
       capacity=st.integers(1, 20))
def test_members_below_their_share_enter_at_once_and_the_total_stays_within_twice_the_bound(
        steps: list[tuple[str, int, float]], capacity: int) -> None:
    a = admission(Clock(), budget_ms=1000, floor=capacity, ceiling=capacity)
    held: dict[str, list[str]] = {m: [] for m in "abc"}
    serial = 0
    for member, asked, committed_share in steps:
        others = sum(1 for m in "abc" if m != member and held[m])
        share = -(-capacity // (others + 1))
        before = len(held[member])
        ids = [f"{member}{serial + i}" for i in range(asked)]
        serial += asked
        verdicts = a.admit(ids, member=member)
        entered = [tx for tx, v in zip(ids, verdicts, strict=True) if v is Admitted.NEW]
        room = 2 * capacity - a.in_flight + len(entered)  # the hard bound, before the call
        assert len(entered) >= min(asked, share - before, room)  # its share, at once
        held[member] += entered
        assert a.in_flight == sum(map(len, held.values())) <= 2 * capacity
        done = held[member][:int(len(held[member]) * committed_share)]
        a.on_block(done)
        held[member] = held[member][len(done):]


def as_caller(peer: Peer, call: Callable[[], T]) -> T:
    """`call` as the interceptor runs a servicer: with `peer` as the verified caller."""
    def run() -> T:
        authz._CALLER.set(peer)
        return call()
    return contextvars.copy_context().run(run)


def test_the_servicer_charges_the_callers_organisation(node: Node,
                                                       consortium_dir: Path) -> None:
    """A member's relay holding the whole bound does not shut out another member."""
    relay = Peer("utility-admin", "utility", Role.ADMIN)
    meter_2 = identity(consortium_dir, "meter-2")
    relayed = [as_caller(relay, lambda n=n: node.submit(signed(node.meter, n))[0])
               for n in (2, 3, 4)]
    assert relayed == ["OK", "OK", "RESOURCE_EXHAUSTED"]
    own = Peer("meter-2", "community", Role.METER)
    assert as_caller(own, lambda: node.submit(signed(meter_2, 2))) == ("OK", {})
    assert as_caller(own, lambda: node.submit(signed(meter_2, 3)))[0] == "RESOURCE_EXHAUSTED"
    assert (node.admission.held_by("utility"), node.admission.held_by("community")) == (2, 1)
    assert node.commit_sent() == [Code.TX_VALIDATION_CODE_VALID] * 3


def test_clients_take_an_answer_slower_than_the_default_budget_as_congestion() -> None:
    """The client's slow-answer signal (core rpc/congestion.py) and admission control's
    default budget are one figure: an answer slower than all of the budget means a queue
    ahead of the endorser's bound."""
    assert SLOW_ANSWER * 1000 == DEFAULT_LATENCY_BUDGET_MS
    assert AdmissionConfig().budget_ms == DEFAULT_LATENCY_BUDGET_MS
