"""The meter agent's sender splits its SubmitBatch calls by bytes too: a run of large envelopes
(history chunks) goes in several calls instead of one the endorser's gRPC refuses whole
("larger than max"), which the agent used to retry unchanged for ever."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
from grpc_helpers import StatusError
from ledger_helpers import identity, past_interval, reading

from gridledger.endorser.v1 import endorser_pb2
from gridledger_core.rpc.submit_batches import SUBMIT_BATCH_BYTES
from gridledger_core.signing_identity import envelope_tx_id
from gridledger_meter_agent.outbox import Outbox
from gridledger_meter_agent.sender import OutboxSender


class ReceiveLimitedEndorser:
    """SubmitBatch as gRPC serves it: a request above the receive limit is refused before it
    is read; every other envelope is acknowledged."""

    def __init__(self) -> None:
        self.requests: list[int] = []

    def SubmitBatch(self, request: endorser_pb2.SubmitBatchRequest,
                    timeout: float | None = None) -> endorser_pb2.SubmitBatchResponse:
        size = request.ByteSize()
        self.requests.append(size)
        if size > SUBMIT_BATCH_BYTES + (64 << 10):
            raise StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"Received message larger than max ({size} vs. 4259840)")
        return endorser_pb2.SubmitBatchResponse(results=[
            endorser_pb2.SubmitResult(tx_id=envelope_tx_id(e)) for e in request.envelopes])


def test_the_meter_agent_splits_a_run_of_large_envelopes(tmp_path: Path,
                                                         consortium_dir: Path) -> None:
    meter = identity(consortium_dir, "meter-1")
    outbox = Outbox(tmp_path / "outbox", capacity=100)
    for n in range(40):  # 40 x 120 KiB: 4.8 MiB, within one call's 128 envelopes
        envelope = meter.new_transaction("meter_reading", reading(meter.name, past_interval(n)))
        envelope.signer_certificate += b"\0" * (120 << 10)  # as large as a history chunk
        outbox.append(envelope.SerializeToString())
    endorser = ReceiveLimitedEndorser()
    sender = OutboxSender(outbox, endorser, None)  # type: ignore[arg-type]
    assert sender.drain(threading.Event())
    assert outbox.pending() == 0 and sender.sent == 40
    assert len(endorser.requests) >= 2 and max(endorser.requests) <= SUBMIT_BATCH_BYTES
