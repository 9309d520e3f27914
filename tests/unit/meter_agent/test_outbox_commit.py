"""A reading leaves the meter-agent's outbox only when a committer shows it committed.

Real components in process: the agent's LMDB outbox, its sender and commit confirmer, the
endorser's servicer over a ledger, and the committer's servicer over that same ledger. Only
the orderers are replaced (the network boundary): a recording broadcaster acknowledges what
it is given, and the test decides what reaches a block, or that the "orderers" lost it.
Time is a settable clock, so nothing here waits.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from broadcast_fakes import SealsThenBroadcasts
from grpc_helpers import InProcess, StatusError
from ledger_helpers import ChainBuilder, identity, past_interval, reading

from gridledger.common.v1 import block_pb2, envelope_pb2, transaction_pb2
from gridledger.orderer.v1 import orderer_pb2
from gridledger_committer.service import CommitterServicer
from gridledger_core.genesis import Genesis
from gridledger_core.ledger import schema
from gridledger_core.ledger.errors import Code
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.profiles import HouseholdProfile
from gridledger_core.rpc.backoff import Backoff
from gridledger_core.rpc.height_notifier import HeightNotifier
from gridledger_core.signing_identity import SigningIdentity, envelope_tx_id
from gridledger_core.storage import MemoryStore
from gridledger_endorser.admission import MIN_RETRY_MS, Admission, AdmissionConfig
from gridledger_endorser.service import EndorserServicer
from gridledger_meter_agent.commit_watch import CommitConfirmer
from gridledger_meter_agent.drivers import SimulatedMeter
from gridledger_meter_agent.outbox import Outbox
from gridledger_meter_agent.readings import IntervalReader, history_threshold
from gridledger_meter_agent.sender import OutboxSender

RESUBMIT_AFTER = 30.0


@dataclass
class Orderers(SealsThenBroadcasts):
    """Acknowledges every transaction; the test orders `sent` into blocks, or loses it."""

    sent: list[bytes] = field(default_factory=list)

    def broadcast(self, endorsed_transaction: bytes,
                  tx_id: str = "") -> orderer_pb2.BroadcastResponse:
        self.sent.append(endorsed_transaction)
        return orderer_pb2.BroadcastResponse(tx_id=tx_id or self.sent_tx_ids()[-1])


    def sent_tx_ids(self) -> list[str]:
        return [envelope_tx_id(envelope_pb2.EndorsedTransaction.FromString(tx).envelope)
                for tx in self.sent]


@dataclass
class Agent:
    outbox: Outbox
    sender: OutboxSender
    orderers: Orderers
    ledger: Ledger
    chain: ChainBuilder
    endorser: InProcess
    committer: InProcess
    meter: SigningIdentity
    clock: list[float]

    def drain(self) -> bool:
        return self.sender.drain(threading.Event())

    def queue(self, envelope: envelope_pb2.SignedEnvelope) -> int:
        return self.outbox.append(envelope.SerializeToString())

    def commit(self, txs: list[bytes]) -> list[int]:
        return self.ledger.commit(self.chain.block(txs)).codes

    def commit_sent(self) -> list[int]:
        result = self.ledger.commit(self.chain.block(self.orderers.sent))
        self.endorser.servicer.on_commit(result)  # the endorser's replica follows
        self.orderers.sent.clear()
        return result.codes


def accept_proof(block: block_pb2.Block, header: block_pb2.BlockHeader,
                 previous: bytes | None) -> None:
    """Consensus proofs are tested with the consensus core."""


def make_agent(tmp_path: Path, genesis: Genesis, consortium_dir: Path,
               confirm: bool = True, capacity: int = 100,
               admission: Admission | None = None, backoff: Backoff | None = None) -> Agent:
    ledger = Ledger(MemoryStore(), genesis, accept_proof)
    orderers = Orderers()
    endorser = InProcess(EndorserServicer(ledger, identity(consortium_dir, "endorser-1"),
                                          orderers, admission=admission))  # type: ignore[arg-type]
    committer = InProcess(CommitterServicer(ledger, HeightNotifier(lambda: ledger.height)))
    clock = [1000.0]
    outbox = Outbox(tmp_path / "outbox", capacity=capacity)
    sender = OutboxSender(outbox, endorser,  # type: ignore[arg-type]
                          CommitConfirmer(committer) if confirm else None,  # type: ignore[arg-type]
                          resubmit_after=RESUBMIT_AFTER, clock=lambda: clock[0],
                          backoff=backoff)
    return Agent(outbox, sender, orderers, ledger, ChainBuilder(), endorser, committer,
                 identity(consortium_dir, "meter-1"), clock)


@pytest.fixture()
def agent(tmp_path: Path, genesis: Genesis, consortium_dir: Path) -> Iterator[Agent]:
    made = make_agent(tmp_path, genesis, consortium_dir)
    yield made
    made.outbox.close()


def signed_reading(meter: SigningIdentity, n: int = 2, produced: int = 500
                   ) -> envelope_pb2.SignedEnvelope:
    return meter.new_transaction("meter_reading",
                                 reading(meter.name, past_interval(n), produced=produced))


def test_acked_but_never_committed_is_resubmitted_and_removed_only_once_committed(
        agent: Agent) -> None:
    envelope = signed_reading(agent.meter)
    tx_id = envelope_tx_id(envelope)
    agent.queue(envelope)
    assert agent.drain()
    assert agent.orderers.sent_tx_ids() == [tx_id]  # the endorser said OK ...
    assert agent.outbox.pending() == 1  # ... and the reading is still kept
    agent.orderers.sent.clear()  # the ordering service loses it

    agent.drain()  # not yet due again: nothing sent
    assert agent.orderers.sent == []
    assert agent.outbox.pending() == 1

    agent.clock[0] += RESUBMIT_AFTER
    agent.drain()
    assert agent.orderers.sent_tx_ids() == [tx_id]  # the same envelope, sent again
    assert agent.outbox.pending() == 1

    assert agent.commit_sent() == [Code.TX_VALIDATION_CODE_VALID]
    agent.drain()
    assert agent.outbox.pending() == 0
    assert agent.outbox.dead_letters() == []
    agent.clock[0] += 10 * RESUBMIT_AFTER
    agent.drain()
    assert agent.orderers.sent == []  # done: never sent again


def test_a_committed_invalid_verdict_dead_letters_the_reading(agent: Agent) -> None:
    ours = signed_reading(agent.meter, produced=500)
    rival = signed_reading(agent.meter, produced=900)  # same interval, another envelope
    agent.queue(ours)
    agent.drain()
    assert agent.outbox.pending() == 1
    # The endorser accepted both (one at a time, at the same height); the rival is ordered
    # first, so ours is committed as a state conflict.
    rival_tx = envelope_pb2.EndorsedTransaction(
        envelope=rival, endorsements=[identity_endorse(agent, rival)]).SerializeToString()
    assert agent.commit([rival_tx, *agent.orderers.sent]) == [
        Code.TX_VALIDATION_CODE_VALID, Code.TX_VALIDATION_CODE_STATE_CONFLICT]
    agent.drain()
    assert agent.outbox.pending() == 0
    [(_, reason)] = agent.outbox.dead_letters()
    assert reason.startswith("committed in block 0 as STATE_CONFLICT: a reading of meter-1")


def identity_endorse(agent: Agent, envelope: envelope_pb2.SignedEnvelope
                     ) -> envelope_pb2.Endorsement:
    return agent.endorser.servicer._sealer([envelope.payload])[0]


def test_already_on_the_ledger_counts_as_submitted_and_is_confirmed(agent: Agent) -> None:
    envelope = signed_reading(agent.meter)
    agent.queue(envelope)
    agent.drain()
    agent.commit_sent()  # committed, but the agent has not looked yet (say it restarted)
    restarted = OutboxSender(agent.outbox, agent.endorser, CommitConfirmer(agent.committer),  # type: ignore[arg-type]
                             resubmit_after=RESUBMIT_AFTER, clock=lambda: agent.clock[0])
    restarted.drain(threading.Event())  # ALREADY_EXISTS from the endorser, then confirmed
    assert agent.orderers.sent == []
    assert agent.outbox.pending() == 0
    assert agent.outbox.dead_letters() == []


def test_unreachable_services_keep_everything(agent: Agent) -> None:
    agent.queue(signed_reading(agent.meter))
    agent.endorser.down = True
    assert not agent.drain()
    assert agent.outbox.pending() == 1
    agent.endorser.down = False
    agent.committer.down = True
    assert agent.drain()
    agent.commit_sent()
    agent.drain()  # committed, but the committer cannot say so
    assert agent.outbox.pending() == 1
    agent.committer.down = False
    agent.drain()
    assert agent.outbox.pending() == 0


def test_only_a_definite_verdict_on_a_settled_reading_dead_letters(agent: Agent) -> None:
    other = agent.meter.new_transaction(  # another meter's reading: PERMISSION_DENIED
        "meter_reading", reading("meter-2", past_interval(3)))
    agent.queue(other)
    agent.drain()
    [(_, reason)] = agent.outbox.dead_letters()
    assert reason.startswith("PERMISSION_DENIED: NOT_AUTHORIZED: meter-1 may not post")
    # A reading of the interval running now is refused as not ended yet: a clock
    # difference, not a verdict; it is kept and retried.
    running = agent.meter.new_transaction(
        "meter_reading", reading("meter-1", past_interval(-1)))
    agent.queue(running)
    assert not agent.drain()
    assert agent.outbox.pending() == 1
    assert len(agent.outbox.dead_letters()) == 1


def test_a_fresh_reading_past_its_deadline_is_dead_lettered_and_holds_nothing_back(
        agent: Agent, genesis: Genesis) -> None:
    """Seen in CI on the fast profile (30 s window): a live reading queued behind a meter's
    backfill reached the endorser a second after its deadline. By the agent's clock it was
    fresh, so it was retried, in order, for five minutes: every reading behind it waited,
    the history gate never opened and the meter did not trade. Block time only grows, so a
    missed deadline is final: dead-letter it and send the rest."""
    window = genesis.reading_submission_window_seconds
    late = reading("meter-1", past_interval(  # due a while ago by the ledger
        window // genesis.reading_interval_seconds + 2))
    later = signed_reading(agent.meter, n=1)
    lagging = OutboxSender(  # an agent whose clock says the late interval ended 10 s ago
        agent.outbox, agent.endorser, CommitConfirmer(agent.committer),  # type: ignore[arg-type]
        resubmit_after=RESUBMIT_AFTER, clock=lambda: agent.clock[0],
        wall_clock=lambda: late.interval_start + late.interval_seconds + 10)
    agent.queue(agent.meter.new_transaction("meter_reading", late))
    agent.queue(later)
    assert lagging.drain(threading.Event())
    [(_, reason)] = agent.outbox.dead_letters()
    assert reason.startswith("INVALID_ARGUMENT: INVALID_BODY: readings_deadline:")
    assert agent.orderers.sent_tx_ids() == [envelope_tx_id(later)]  # not held back
    agent.commit_sent()
    lagging.drain(threading.Event())
    assert agent.outbox.pending() == 0


def test_without_a_committer_the_endorsers_ok_removes_it(
        tmp_path: Path, genesis: Genesis, consortium_dir: Path) -> None:
    weak = make_agent(tmp_path, genesis, consortium_dir, confirm=False)
    weak.queue(signed_reading(weak.meter))
    weak.drain()
    assert weak.outbox.pending() == 0
    assert len(weak.orderers.sent) == 1
    weak.outbox.close()


def test_a_full_outbox_holds_the_reader_back_without_dropping(
        tmp_path: Path, genesis: Genesis, consortium_dir: Path) -> None:
    small = make_agent(tmp_path, genesis, consortium_dir, capacity=3)
    interval = genesis.reading_interval_seconds
    now = past_interval(1) + interval
    profile = HouseholdProfile(seed=1, pv_kwp=4.0, annual_kwh=3500.0)
    # Intervals older than half the submission window go as history, one per transaction
    # here, so each is one outbox entry like a live reading.
    reader = IntervalReader(SimulatedMeter(profile, now - 400 * 86400), small.meter,
                            small.outbox, interval,
                            history_before_s=genesis.reading_submission_window_seconds // 2,
                            history_chunk=1)
    assert reader.poll(now, backfill_seconds=10 * interval, max_intervals=100) == 3
    assert reader.poll(now, backfill_seconds=10 * interval, max_intervals=100) == 0
    small.drain()
    assert small.outbox.pending() == 3  # sent, but awaiting their commit: still counted
    assert reader.poll(now, backfill_seconds=10 * interval, max_intervals=100) == 0
    small.commit_sent()
    small.drain()
    assert small.outbox.pending() == 0
    assert reader.poll(now, backfill_seconds=10 * interval, max_intervals=100) == 3
    small.drain()
    small.commit_sent()
    small.drain()
    assert reader.poll(now, backfill_seconds=10 * interval, max_intervals=100) == 3
    small.drain()
    small.commit_sent()
    small.drain()
    assert reader.poll(now, backfill_seconds=10 * interval, max_intervals=100) == 1
    small.drain()
    small.commit_sent()
    small.drain()
    # Every interval once, none skipped: ten consecutive readings on the ledger.
    starts = sorted(r.interval_start for r in committed_readings(small))
    assert starts == [starts[0] + k * interval for k in range(10)]
    small.outbox.close()


def committed_readings(agent: Agent) -> list[transaction_pb2.MeterReading]:
    out = []
    for number in range(agent.ledger.height):
        found = agent.ledger.get_block(number)
        assert found is not None
        for raw in found[0].transactions:
            tx = transaction_pb2.Transaction.FromString(
                envelope_pb2.EndorsedTransaction.FromString(raw).envelope.payload)
            if tx.WhichOneof("body") == "history_readings":
                out += [transaction_pb2.MeterReading(
                    meter=tx.header.creator, interval_start=e.interval_start,
                    produced_wh=e.produced_wh, consumed_wh=e.consumed_wh)
                    for e in tx.history_readings.readings]
            else:
                out.append(tx.meter_reading)
    return out


def test_backfill_goes_as_onboarding_history_first_then_live_readings(
        tmp_path: Path, genesis: Genesis, consortium_dir: Path) -> None:
    """Ten intervals of backfill: those older than half the submission window leave in
    HistoryReadings chunks, the recent ones as live readings; all commit VALID, the history
    is flagged, and the reader reports it has caught up."""
    agent = make_agent(tmp_path, genesis, consortium_dir)
    interval = genesis.reading_interval_seconds
    now = past_interval(1) + interval
    profile = HouseholdProfile(seed=1, pv_kwp=4.0, annual_kwh=3500.0)
    window = genesis.reading_submission_window_seconds
    reader = IntervalReader(SimulatedMeter(profile, now - 400 * 86400), agent.meter,
                            agent.outbox, interval, history_before_s=window // 2,
                            history_chunk=4)
    created = reader.poll(now, backfill_seconds=10 * interval, max_intervals=100)
    assert reader.caught_up.is_set()
    agent.drain()
    kinds = [transaction_pb2.Transaction.FromString(
        envelope_pb2.EndorsedTransaction.FromString(raw).envelope.payload).WhichOneof("body")
        for raw in agent.orderers.sent]
    history = [k for k in kinds if k == "history_readings"]
    assert kinds == history + ["meter_reading"] * (len(kinds) - len(history)) and history
    assert created == len(kinds)
    assert set(agent.commit_sent()) == {Code.TX_VALIDATION_CODE_VALID}
    starts = sorted(r.interval_start for r in committed_readings(agent))
    assert starts == [starts[0] + k * interval for k in range(10)]
    flagged = [s for s in starts
               if agent.ledger.get_state(schema.reading_history_key("meter-1", s)) is not None]
    assert flagged == [s for s in starts if s + interval + window // 2 < now]
    agent.drain()
    assert agent.outbox.pending() == 0
    agent.outbox.close()


def test_history_threshold_leaves_a_sending_margin_inside_the_window() -> None:
    assert history_threshold(3600) == 3300
    assert history_threshold(120) == 60
    assert history_threshold(30) == 15  # the fast profile: 15 s to send a live reading


# -- admission control and the batch API -------------------------------------------------------

def test_refused_by_admission_the_sender_waits_the_hint_plus_jitter_and_loses_nothing(
        tmp_path: Path, genesis: Genesis, consortium_dir: Path) -> None:
    agent = make_agent(tmp_path, genesis, consortium_dir,
                       admission=Admission(AdmissionConfig(budget_ms=40, floor=1, ceiling=1),
                                           lambda: 0.0),
                       backoff=Backoff(base_s=0.015, draw=lambda: 0.5))
    envelopes = [signed_reading(agent.meter, n) for n in (2, 3, 4)]
    for envelope in envelopes:
        agent.queue(envelope)
    assert agent.drain()  # reachable: the endorser answered, and said when to come back
    assert agent.orderers.sent_tx_ids() == [envelope_tx_id(envelopes[0])]
    assert agent.endorser.calls == ["SubmitBatch"]
    agent.orderers.sent.clear()  # acknowledged; committed below
    # Refused: not before the hint (MIN_RETRY_MS, above the 15 ms base) x 1.5 (the jitter).
    first_wait = MIN_RETRY_MS / 1000 * 1.5
    agent.clock[0] += first_wait * 0.9
    agent.drain()
    assert agent.endorser.calls.count("SubmitBatch") == 1  # not yet
    agent.clock[0] += first_wait * 0.2
    agent.orderers.sent.clear()
    agent.drain()  # still full (nothing committed): both refused, no progress ...
    assert agent.endorser.calls.count("SubmitBatch") == 2 and agent.orderers.sent == []
    # ... so the wait grows (exponential: 15 ms x 2 for the second refusal in a row).
    second_wait = 0.015 * 2 * 1.5
    agent.orderers.sent = [endorsed_by(agent, envelopes[0])]
    assert agent.commit_sent() == [Code.TX_VALIDATION_CODE_VALID]  # frees the slot
    agent.clock[0] += second_wait * 0.9
    agent.drain()
    assert agent.orderers.sent == []
    agent.clock[0] += second_wait * 0.2
    agent.drain()
    assert agent.orderers.sent_tx_ids() == [envelope_tx_id(envelopes[1])]
    agent.commit_sent()
    agent.clock[0] += 1.0
    agent.drain()
    assert agent.orderers.sent_tx_ids() == [envelope_tx_id(envelopes[2])]
    agent.commit_sent()
    agent.drain()
    assert agent.outbox.pending() == 0 and agent.outbox.dead_letters() == []


def endorsed_by(agent: Agent, envelope: envelope_pb2.SignedEnvelope) -> bytes:
    return envelope_pb2.EndorsedTransaction(
        envelope=envelope, endorsements=[identity_endorse(agent, envelope)]).SerializeToString()


class WithoutBatch:
    """An endorser from before SubmitBatch: UNIMPLEMENTED for it, the rest as `stub`."""

    def __init__(self, stub: InProcess) -> None:
        self.stub = stub

    def SubmitBatch(self, request: object, timeout: float | None = None) -> None:
        raise StatusError(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")

    def __getattr__(self, name: str) -> object:
        return getattr(self.stub, name)


def test_an_endorser_without_submit_batch_gets_single_calls_in_order(agent: Agent) -> None:
    agent.sender._stub = WithoutBatch(agent.endorser)  # type: ignore[assignment]
    envelopes = [signed_reading(agent.meter, n) for n in (2, 3)]
    for envelope in envelopes:
        agent.queue(envelope)
    assert agent.drain()
    assert agent.endorser.calls == ["SubmitTransaction", "SubmitTransaction"]
    assert agent.orderers.sent_tx_ids() == [envelope_tx_id(e) for e in envelopes]
