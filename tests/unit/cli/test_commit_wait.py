"""gridctl's submit-and-wait (commit_wait.py) against the real endorser and committer
servicers over one ledger, the orderers replaced by a recorder (the network boundary), and a
clock that sleeping advances (nothing here really waits)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from broadcast_fakes import SealsThenBroadcasts
from grpc_helpers import InProcess, StatusError
from ledger_helpers import ChainBuilder, identity, past_interval, reading

from gridctl import commit_wait
from gridledger.common.v1 import envelope_pb2
from gridledger.orderer.v1 import orderer_pb2
from gridledger_committer.service import CommitterServicer
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.rpc.backoff import Backoff
from gridledger_core.rpc.height_notifier import HeightNotifier
from gridledger_core.signing_identity import SigningIdentity, envelope_tx_id
from gridledger_core.storage import MemoryStore
from gridledger_endorser.service import EndorserServicer


@dataclass
class Orderers(SealsThenBroadcasts):
    sent: list[bytes] = field(default_factory=list)

    def broadcast(self, endorsed_transaction: bytes,
                  tx_id: str) -> orderer_pb2.BroadcastResponse:
        self.sent.append(endorsed_transaction)
        return orderer_pb2.BroadcastResponse(tx_id=tx_id)


@dataclass
class Net:
    ledger: Ledger
    orderers: Orderers
    endorser: InProcess
    committer: InProcess
    meter: SigningIdentity
    chain: ChainBuilder = field(default_factory=ChainBuilder)
    now: list[float] = field(default_factory=lambda: [0.0])
    on_sleep: list = field(default_factory=list)  # called once per sleep, then dropped

    def clock(self) -> float:
        return self.now[0]

    def sleep(self, seconds: float) -> None:
        self.now[0] += seconds
        if self.on_sleep:
            self.on_sleep.pop(0)()

    def commit_sent(self) -> None:
        self.ledger.commit(self.chain.block(self.orderers.sent))
        self.orderers.sent.clear()

    def reading(self, meter: str = "meter-1", n: int = 2) -> envelope_pb2.SignedEnvelope:
        return self.meter.new_transaction("meter_reading", reading(meter, past_interval(n)))

    def submit(self, envelope: envelope_pb2.SignedEnvelope, timeout: float = 10) -> str:
        return commit_wait.submit(self.endorser, envelope, timeout, self.clock, self.sleep)

    def wait(self, tx_id: str, timeout: float = 10) -> dict:
        return commit_wait.wait_committed(self.committer, tx_id, timeout, self.clock,
                                          self.sleep)


@pytest.fixture()
def net(genesis: Genesis, consortium_dir: Path) -> Net:
    ledger = Ledger(MemoryStore(), genesis, lambda *_: None)
    orderers = Orderers()
    endorser = InProcess(EndorserServicer(ledger, identity(consortium_dir, "endorser-1"),
                                          orderers))  # type: ignore[arg-type]
    committer = InProcess(CommitterServicer(ledger, HeightNotifier(lambda: ledger.height)))
    return Net(ledger, orderers, endorser, committer, identity(consortium_dir, "meter-1"))


def test_waits_for_the_commit_and_reports_block_and_code(net: Net) -> None:
    envelope = net.reading()
    tx_id = net.submit(envelope)
    assert tx_id == envelope_tx_id(envelope)
    net.on_sleep.append(net.commit_sent)  # the block arrives while gridctl polls
    out = net.wait(tx_id)
    assert out == {"block": 0, "validation_code": "VALID", "message": ""}
    assert commit_wait.outcome_line(out) == "committed in block 0 as VALID"
    commit_wait.finish(out)  # no exit


def test_acknowledged_but_never_committed_is_said_and_exits_3(
        net: Net, capsys: pytest.CaptureFixture[str]) -> None:
    tx_id = net.submit(net.reading())
    net.orderers.sent.clear()  # lost by the ordering service
    with pytest.raises(SystemExit) as exited:
        net.wait(tx_id, timeout=5)
    assert exited.value.code == commit_wait.EXIT_NOT_COMMITTED
    assert f"transaction {tx_id} submitted but not yet committed after 5 s" in \
        capsys.readouterr().err


def test_committed_invalid_exits_4(net: Net) -> None:
    first, second = net.reading(), net.reading()  # the same interval twice
    net.submit(first)
    second_id = net.submit(second)  # both pass the endorser before either is in a block
    net.commit_sent()
    out = net.wait(second_id)
    assert out["validation_code"] == "STATE_CONFLICT"
    assert commit_wait.outcome_line(out).startswith(
        "committed in block 0 as STATE_CONFLICT: a reading of meter-1")
    with pytest.raises(SystemExit) as exited:
        commit_wait.finish(out)
    assert exited.value.code == commit_wait.EXIT_NOT_VALID


def test_an_unavailable_network_is_retried_with_the_same_envelope(net: Net) -> None:
    envelope = net.reading()
    net.endorser.down = True
    net.on_sleep.append(lambda: setattr(net.endorser, "down", False))
    assert net.submit(envelope) == envelope_tx_id(envelope)
    assert net.endorser.calls == ["SubmitTransaction", "SubmitTransaction"]
    assert len(net.orderers.sent) == 1
    net.commit_sent()
    assert net.submit(envelope) == envelope_tx_id(envelope)  # ALREADY_EXISTS: it is in
    assert net.wait(envelope_tx_id(envelope))["validation_code"] == "VALID"


def test_a_network_down_for_the_whole_timeout_exits_2(net: Net) -> None:
    net.endorser.down = True
    with pytest.raises(SystemExit) as exited:
        net.submit(net.reading(), timeout=5)
    assert exited.value.code == commit_wait.EXIT_REFUSED
    assert net.now[0] <= 5


def test_a_refusal_is_not_retried(net: Net, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        net.submit(net.reading(meter="meter-2"))
    assert exited.value.code == commit_wait.EXIT_REFUSED
    assert "PERMISSION_DENIED: NOT_AUTHORIZED: meter-1 may not post" in capsys.readouterr().err
    assert net.endorser.calls == ["SubmitTransaction"]


def test_retry_after_hint_is_honoured() -> None:
    slept: list[float] = []

    class Full:
        def SubmitTransaction(self, request: object, timeout: float) -> object:
            if not slept:
                raise StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, "full",
                                  (("retry-after-ms", "1500"),))
            return type("R", (), {"tx_id": "x"})()

    assert commit_wait.submit(Full(), envelope_pb2.SignedEnvelope(), 10, lambda: 0.0,
                              slept.append, Backoff(base_s=0.25, draw=lambda: 0.0)) == "x"
    assert slept == [1.5]
    slept.clear()  # with jitter: above the hint, never below it
    assert commit_wait.submit(Full(), envelope_pb2.SignedEnvelope(), 10, lambda: 0.0,
                              slept.append, Backoff(base_s=0.25, draw=lambda: 0.5)) == "x"
    assert slept == [2.25]
