"""The settlement agent (settler.py) against a fake committer and endorser: which slots it
settles and when (block time), that it never asks twice for a settled slot, that its work
per pass is bounded, and that repeated failures back off and turn health NOT_SERVING.

The ledger rule itself (what SettleSlot computes, and that a second one is refused) is tested
with the rules and in tests/integration/test_settlement_cycle.py; here the fake stands in for
the network so the agent's decisions can be driven step by step."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest
from grpc_helpers import StatusError

from gridledger.committer.v1 import committer_pb2
from gridledger.common.v1 import (
    block_pb2,
    energy_pb2,
    market_pb2,
    settlement_pb2,
    transaction_pb2,
)
from gridledger.endorser.v1 import endorser_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.ledger import schema
from gridledger_core.ledger.errors import Code
from gridledger_core.signing_identity import SigningIdentity, envelope_tx_id
from gridledger_meter_agent import settler as settler_mod
from gridledger_meter_agent.ledger_client import LedgerClient
from gridledger_meter_agent.settler import Settler


class FakeNetwork:
    """Committer queries over a dict of state and a block time, and an endorser whose
    SubmitTransaction commits at once with `rule`'s code."""

    def __init__(self, genesis: Genesis) -> None:
        self.genesis = genesis
        self.state: dict[str, bytes] = {}
        self.block_time = 0
        self.height = 1
        self.txs: dict[str, tuple[int, str]] = {}
        self.submitted: list[tuple[str, object]] = []
        self.contracts: dict[str, energy_pb2.SupplyContractRecord] = {}
        self.refuse: grpc.StatusCode | None = None  # endorser refuses every submission
        self.invalid: int | None = None  # commits every submission with this code

    # -- test setup -------------------------------------------------------------------------

    def trade(self, slot: int, sequence: int) -> None:
        record = market_pb2.TradeRecord(trade_id=f"t{sequence}", slot_start=slot,
                                        quantity_wh=10, sequence=sequence)
        self.state[schema.trade_key(slot, sequence)] = record.SerializeToString()

    def settle(self, slot: int) -> None:
        self.state[schema.settlement_key(slot)] = settlement_pb2.SlotSettlement(
            slot_start=slot, traded_wh=10, shortfall_wh=3, surplus_wh=2).SerializeToString()

    # -- committer --------------------------------------------------------------------------

    def GetChainInfo(self, request: object, timeout: float) -> committer_pb2.GetChainInfoResponse:
        return committer_pb2.GetChainInfoResponse(height=self.height)

    def GetBlock(self, request: committer_pb2.GetBlockRequest,
                 timeout: float) -> committer_pb2.GetBlockResponse:
        header = block_pb2.BlockHeader(number=request.number)
        header.timestamp.seconds = self.block_time
        response = committer_pb2.GetBlockResponse()
        response.block.header = header.SerializeToString()
        return response

    def GetState(self, request: committer_pb2.GetStateRequest,
                 timeout: float) -> committer_pb2.GetStateResponse:
        value = self.state.get(request.key)
        return committer_pb2.GetStateResponse(found=value is not None, value=value or b"")

    def ListTrades(self, request: committer_pb2.ListTradesRequest,
                   timeout: float) -> committer_pb2.ListTradesResponse:
        assert request.page_token.startswith(schema.trade_prefix())
        keys = sorted(k for k in self.state if k.startswith(schema.trade_prefix())
                      and k >= request.page_token)
        page = keys[:request.page_size]
        token = keys[request.page_size] if len(keys) > request.page_size else ""
        return committer_pb2.ListTradesResponse(
            trades=[market_pb2.TradeRecord.FromString(self.state[k]) for k in page],
            next_page_token=token)

    def ListContracts(self, request: committer_pb2.ListContractsRequest,
                      timeout: float) -> committer_pb2.ListContractsResponse:
        return committer_pb2.ListContractsResponse(contracts=[
            c for c in self.contracts.values() if c.status == request.status])

    def GetContract(self, request: committer_pb2.GetContractRequest,
                    timeout: float) -> committer_pb2.GetContractResponse:
        return committer_pb2.GetContractResponse(contract=self.contracts[request.contract_id])

    def GetTransaction(self, request: committer_pb2.GetTransactionRequest,
                       timeout: float) -> committer_pb2.GetTransactionResponse:
        if request.tx_id not in self.txs:
            raise StatusError(grpc.StatusCode.NOT_FOUND, "no such transaction")
        code, message = self.txs[request.tx_id]
        return committer_pb2.GetTransactionResponse(validation_code=code, message=message)

    # -- endorser ---------------------------------------------------------------------------

    def SubmitTransaction(self, request: endorser_pb2.SubmitTransactionRequest,
                          timeout: float) -> endorser_pb2.SubmitTransactionResponse:
        if self.refuse is not None:
            raise StatusError(self.refuse, "refused by the fake endorser")
        tx = transaction_pb2.Transaction.FromString(request.envelope.payload)
        body = tx.WhichOneof("body")
        self.submitted.append((body, getattr(tx, body)))
        tx_id = envelope_tx_id(request.envelope)
        if self.invalid is not None:
            self.txs[tx_id] = (self.invalid, "invalid in the fake")
        elif body == "settle_slot":
            slot = tx.settle_slot.slot_start
            if schema.settlement_key(slot) in self.state:
                self.txs[tx_id] = (Code.TX_VALIDATION_CODE_STATE_CONFLICT, "already settled")
            else:
                self.settle(slot)
                self.txs[tx_id] = (Code.TX_VALIDATION_CODE_VALID, "")
        elif body == "close_contract":
            contract = self.contracts[tx.close_contract.contract_id]
            if contract.status != energy_pb2.CONTRACT_STATUS_OPEN:
                self.txs[tx_id] = (Code.TX_VALIDATION_CODE_STATE_CONFLICT, "not open")
            else:
                contract.status = energy_pb2.CONTRACT_STATUS_ENDED
                self.txs[tx_id] = (Code.TX_VALIDATION_CODE_VALID, "")
        return endorser_pb2.SubmitTransactionResponse(tx_id=tx_id)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def net(genesis: Genesis) -> FakeNetwork:
    return FakeNetwork(genesis)


def _settler(consortium_dir: Path, genesis: Genesis, net: FakeNetwork,
             clock: Clock | None = None) -> Settler:
    ledger = LedgerClient(net, net, timeout=1.0)  # type: ignore[arg-type]
    return Settler(SigningIdentity.load(consortium_dir, "settlement"), genesis, ledger,
                   clock=clock or Clock())


def _settled_slots(net: FakeNetwork) -> list[int]:
    return [body.slot_start for kind, body in net.submitted  # type: ignore[attr-defined]
            if kind == "settle_slot"]


def test_settles_each_slot_with_trades_once_its_readings_deadline_has_passed_by_block_time(
        consortium_dir: Path, genesis: Genesis, net: FakeNetwork) -> None:
    size = genesis.market.slot_seconds
    window = genesis.reading_submission_window_seconds
    slots = [100 * size, 101 * size, 103 * size]
    for i, slot in enumerate(slots):
        net.trade(slot, 2 * i)
        net.trade(slot, 2 * i + 1)
    agent = _settler(consortium_dir, genesis, net)
    # At the deadline of the first slot nothing is due yet (due only once block time is past).
    net.block_time = slots[0] + size + window
    assert agent.run_once().settled == []
    net.block_time += 1
    assert agent.run_once().settled == [slots[0]]
    # Later: the two others (102 has no trades and is never asked for), oldest first.
    net.block_time = slots[2] + size + window + 1
    assert agent.run_once().settled == slots[1:]
    assert _settled_slots(net) == slots
    # Nothing more to do: a further pass submits nothing, and the cursor is past them.
    assert agent.run_once().settled == []
    assert _settled_slots(net) == slots
    assert agent.cursor == slots[2] + 1


def test_a_slot_settled_by_someone_else_is_not_asked_for_again(
        consortium_dir: Path, genesis: Genesis, net: FakeNetwork) -> None:
    size = genesis.market.slot_seconds
    net.trade(50 * size, 1)
    net.trade(51 * size, 2)
    net.settle(50 * size)  # another agent, or this one before a restart
    net.block_time = 60 * size + genesis.reading_submission_window_seconds
    agent = _settler(consortium_dir, genesis, net)
    assert agent.run_once().settled == [51 * size]
    assert _settled_slots(net) == [51 * size]


def test_a_conflict_because_the_slot_got_settled_meanwhile_is_not_a_failure(
        consortium_dir: Path, genesis: Genesis, net: FakeNetwork) -> None:
    size = genesis.market.slot_seconds
    net.trade(10 * size, 1)
    net.block_time = 20 * size + genesis.reading_submission_window_seconds
    agent = _settler(consortium_dir, genesis, net)
    # The agent's probe saw the slot unsettled; its transaction lands after another's.
    original = net.SubmitTransaction

    def racing(request: endorser_pb2.SubmitTransactionRequest,
               timeout: float) -> endorser_pb2.SubmitTransactionResponse:
        net.settle(10 * size)
        return original(request, timeout)

    net.SubmitTransaction = racing  # type: ignore[method-assign]
    result = agent.run_once()
    assert (result.settled, result.failed) == ([], [])
    assert agent.retries == {} and agent.stuck() == []


def test_work_per_pass_is_bounded(consortium_dir: Path, genesis: Genesis,
                                  net: FakeNetwork) -> None:
    size = genesis.market.slot_seconds
    count = settler_mod.MAX_SUBMITS * 2 + 3
    for i in range(count):
        net.trade((1000 + i) * size, i)
    net.block_time = (2000 + count) * size
    agent = _settler(consortium_dir, genesis, net)
    assert len(agent.run_once().settled) == settler_mod.MAX_SUBMITS
    assert len(agent.run_once().settled) == settler_mod.MAX_SUBMITS
    assert len(agent.run_once().settled) == 3
    assert _settled_slots(net) == [(1000 + i) * size for i in range(count)]


def test_failures_back_off_and_turn_health_not_serving_until_a_slot_settles(
        consortium_dir: Path, genesis: Genesis, net: FakeNetwork) -> None:
    size = genesis.market.slot_seconds
    net.trade(10 * size, 1)
    net.block_time = 20 * size + genesis.reading_submission_window_seconds
    clock = Clock()
    agent = _settler(consortium_dir, genesis, net, clock)
    net.refuse = grpc.StatusCode.FAILED_PRECONDITION
    assert agent.run_once().failed == [f"slot/{10 * size}"]
    # Backing off: the next pass at the same moment does not submit again.
    before = len(net.submitted)
    assert agent.run_once().failed == []
    assert len(net.submitted) == before
    for _ in range(settler_mod.UNHEALTHY_AFTER - 1):
        clock.now += settler_mod.RETRY_MAX_S
        assert agent.run_once().failed == [f"slot/{10 * size}"]
    assert agent.stuck() == [f"slot/{10 * size}"]
    # Committed but invalid is a failure too, and is retried after the backoff.
    net.refuse = None
    net.invalid = Code.TX_VALIDATION_CODE_INVALID_BODY
    clock.now += settler_mod.RETRY_MAX_S
    assert agent.run_once().failed == [f"slot/{10 * size}"]
    net.invalid = None
    clock.now += settler_mod.RETRY_MAX_S
    assert agent.run_once().settled == [10 * size]
    assert agent.stuck() == []


def test_the_loop_is_not_ready_while_its_committer_is_away_and_not_live_while_it_fails(
        consortium_dir: Path, genesis: Genesis, net: FakeNetwork,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its committer away turned the agent NOT_SERVING for the liveness probe too, which
    restarted it through the outage: now only readiness is off until the committer is back;
    its own failures (its disk) still turn liveness off."""
    monkeypatch.setattr(settler_mod, "MIN_PASS_INTERVAL_S", 0.0)
    agent = _settler(consortium_dir, genesis, net)
    health: list[bool] = []
    ready: list[bool] = []
    stop, wake = threading.Event(), threading.Event()
    passes = 0
    seen: list[tuple[list[bool], list[bool]]] = []

    def run_once() -> settler_mod.PassResult:
        nonlocal passes
        passes += 1
        wake.set()  # no waiting between passes in the test
        seen.append((list(health), list(ready)))
        if passes <= settler_mod.UNHEALTHY_AFTER:
            raise StatusError(grpc.StatusCode.UNAVAILABLE, "committer away")
        if passes == settler_mod.UNHEALTHY_AFTER + 1:
            return settler_mod.PassResult()
        if passes <= 2 * settler_mod.UNHEALTHY_AFTER + 1:
            raise OSError(28, "No space left on device")
        if passes == 2 * settler_mod.UNHEALTHY_AFTER + 3:
            stop.set()
        return settler_mod.PassResult()

    agent.run_once = run_once  # type: ignore[method-assign]
    wake.set()
    agent.run(stop, wake, health.append, ready.append)
    # After the committer's outage: live throughout, not ready, then ready again.
    assert seen[settler_mod.UNHEALTHY_AFTER] == ([], [False])
    assert seen[settler_mod.UNHEALTHY_AFTER + 1] == ([], [False, True])
    assert (health, ready) == ([False, True], [False, True])


def test_slots_failing_because_the_endorser_is_unreachable_wait_and_are_not_stuck(
        consortium_dir: Path, genesis: Genesis, net: FakeNetwork,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A slot whose submissions find the endorser unreachable is retried with backoff; it
    takes the agent out of service (readiness) and does not make it unhealthy (which its
    liveness probe would answer with a restart). Refused for its own reasons as often, it is
    stuck, whatever failures of the other kind came between."""
    size = genesis.market.slot_seconds
    net.trade(10 * size, 1)
    net.block_time = 20 * size + genesis.reading_submission_window_seconds
    clock = Clock()
    agent = _settler(consortium_dir, genesis, net, clock)
    monkeypatch.setattr(agent.ledger, "sleep", lambda _seconds: None)  # its retries' backoff
    slot = f"slot/{10 * size}"

    def attempt() -> None:
        assert agent.run_once().failed == [slot]
        clock.now += settler_mod.RETRY_MAX_S

    net.refuse = grpc.StatusCode.UNAVAILABLE
    for _ in range(settler_mod.UNHEALTHY_AFTER):
        attempt()
    assert (agent.stuck(), agent.waiting()) == ([], [slot])
    for _ in range(5):  # a long outage: tried again within the short cap, not 5 minutes
        attempt()
    waits = agent.retries[slot].not_before - (clock.now - settler_mod.RETRY_MAX_S)
    assert waits == settler_mod.UNREACHABLE_RETRY_MAX_S
    net.refuse = grpc.StatusCode.RESOURCE_EXHAUSTED  # busy: neither
    attempt()
    assert (agent.stuck(), agent.waiting()) == ([], [slot])
    net.refuse = grpc.StatusCode.FAILED_PRECONDITION
    for _ in range(settler_mod.UNHEALTHY_AFTER - 1):
        attempt()
    assert (agent.stuck(), agent.waiting()) == ([], [])  # refused: not waiting any more
    net.refuse = grpc.StatusCode.UNAVAILABLE
    attempt()  # an outage between does not reset what the slot did itself
    net.refuse = grpc.StatusCode.FAILED_PRECONDITION
    attempt()
    assert agent.stuck() == [slot]


def test_the_loop_is_not_ready_while_submissions_find_the_endorser_unreachable(
        consortium_dir: Path, genesis: Genesis, net: FakeNetwork,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The committer answers, so every pass completes; only the slot's submissions fail,
    the endorser unreachable: the agent is out of service, live, until the slot settles."""
    monkeypatch.setattr(settler_mod, "MIN_PASS_INTERVAL_S", 0.0)
    size = genesis.market.slot_seconds
    net.trade(10 * size, 1)
    net.block_time = 20 * size + genesis.reading_submission_window_seconds
    clock = Clock()
    agent = _settler(consortium_dir, genesis, net, clock)
    monkeypatch.setattr(agent.ledger, "sleep", lambda _seconds: None)
    net.refuse = grpc.StatusCode.UNAVAILABLE
    health: list[bool] = []
    ready: list[bool] = []
    stop, wake = threading.Event(), threading.Event()
    run_once = agent.run_once
    passes = 0

    def one_pass() -> settler_mod.PassResult:
        nonlocal passes
        passes += 1
        clock.now += settler_mod.RETRY_MAX_S  # past each backoff
        wake.set()  # no waiting between passes in the test
        if passes == settler_mod.UNHEALTHY_AFTER + 1:
            net.refuse = None  # the endorser is back
        if passes == settler_mod.UNHEALTHY_AFTER + 2:
            stop.set()
        return run_once()

    agent.run_once = one_pass  # type: ignore[method-assign]
    wake.set()
    agent.run(stop, wake, health.append, ready.append)
    assert (health, ready) == ([], [False, True])
    assert _settled_slots(net) == [10 * size]


def test_before_the_first_block_nothing_is_judged(consortium_dir: Path, genesis: Genesis,
                                                  net: FakeNetwork) -> None:
    net.height = 0
    net.trade(0, 1)
    agent = _settler(consortium_dir, genesis, net)
    assert agent.run_once().settled == []
    assert net.submitted == []


def test_closes_open_contracts_once_deliver_by_and_the_readings_window_have_passed(
        consortium_dir: Path, genesis: Genesis, net: FakeNetwork) -> None:
    window = genesis.reading_submission_window_seconds
    for cid, deliver_by in (("a" * 64, 10_000), ("b" * 64, 20_000)):
        net.contracts[cid] = energy_pb2.SupplyContractRecord(
            contract_id=cid, deliver_by=deliver_by, status=energy_pb2.CONTRACT_STATUS_OPEN)
    net.contracts["c" * 64] = energy_pb2.SupplyContractRecord(
        contract_id="c" * 64, deliver_by=1, status=energy_pb2.CONTRACT_STATUS_ISSUED)
    agent = _settler(consortium_dir, genesis, net)
    net.block_time = 10_000 + window  # the last interval's reading may still come
    assert agent.run_once().closed == []
    net.block_time += 1
    assert agent.run_once().closed == ["a" * 64]
    net.block_time = 30_000
    # Its meter closed the other one first: not a failure, and not asked twice.
    net.contracts["b" * 64].status = energy_pb2.CONTRACT_STATUS_ENDED
    result = agent.run_once()
    assert (result.closed, result.failed) == ([], [])
    assert [b.contract_id for k, b in net.submitted  # type: ignore[attr-defined]
            if k == "close_contract"] == ["a" * 64]
