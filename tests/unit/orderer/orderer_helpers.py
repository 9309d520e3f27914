"""An in-process orderer (OrdererServicer over an OrdererNode on LMDB) whose consensus loop
the test drives, and endorsed readings to broadcast to it."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

from grpc_helpers import FakeContext

from gridledger.common.v1 import envelope_pb2, transaction_pb2
from gridledger.orderer.v1 import orderer_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.rpc.height_notifier import HeightNotifier
from gridledger_core.signing_identity import SigningIdentity
from gridledger_core.storage import LmdbStore
from gridledger_orderer.limits import OrdererLimits
from gridledger_orderer.node import OrdererNode, OrderingParams
from gridledger_orderer.service import OrdererServicer
from gridledger_orderer.store import OrdererStore
from gridledger_orderer.transport import Transport


class Orderer:
    def __init__(self, consortium_dir: Path, genesis: Genesis, directory: Path,
                 limits: OrdererLimits | None = None) -> None:
        identity = SigningIdentity.load(consortium_dir, "orderer-1")
        self.store = OrdererStore(LmdbStore(directory))
        self.node = OrdererNode(genesis, identity, self.store, Transport([], None),  # type: ignore[arg-type]
                                OrderingParams(), lambda block: None, limits)
        self.api = OrdererServicer(self.node, self.store, HeightNotifier(lambda: 0))

        self.taken: list[bytes] = []

    def pump(self) -> None:
        """One turn of the consensus loop's client side."""
        item = self.node._inbox.get(0.01)
        if isinstance(item, list):
            self.taken += [tx for submission in item for tx in submission.txs]
            with contextlib.suppress(Exception):  # as the loop does: logged, not fatal
                self.node._on_submissions(item, time.time())

    def call(self, api_call: Callable[[], object]) -> object:
        """Run an API call (it waits for durability) while pumping the inbox."""
        outcome: list[object] = []

        def run() -> None:
            try:
                outcome.append(api_call())
            except Exception as exc:
                outcome.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        while thread.is_alive():
            self.pump()
        thread.join()
        if isinstance(outcome[0], Exception):
            raise outcome[0]
        return outcome[0]

    def batch(self, txs: list[bytes]) -> list[orderer_pb2.BroadcastResult]:
        request = orderer_pb2.BroadcastBatchRequest(endorsed_transactions=txs)
        response = self.call(lambda: self.api.BroadcastBatch(request, FakeContext()))  # type: ignore[arg-type]
        return list(response.results)  # type: ignore[attr-defined]

    def admitted(self) -> list[bytes]:
        """Everything the API handed to the consensus loop since the last call."""
        taken, self.taken = self.taken, []
        return taken


def readings(consortium_dir: Path, count: int, *, endorser: str | None = "endorser-1",
             first: int = 1) -> list[bytes]:
    meter = SigningIdentity.load(consortium_dir, "meter-1")
    signer = SigningIdentity.load(consortium_dir, endorser) if endorser else None
    base = (int(time.time()) // 900 - 1000) * 900
    txs = []
    for i in range(first, first + count):
        envelope = meter.new_transaction("meter_reading", transaction_pb2.MeterReading(
            meter="meter-1", interval_start=base - i * 900, interval_seconds=900,
            produced_wh=i, consumed_wh=0))
        endorsed = envelope_pb2.EndorsedTransaction(envelope=envelope)
        if signer is not None:
            endorsed.endorsements.append(signer.endorse(envelope))
        txs.append(endorsed.SerializeToString())
    return txs
