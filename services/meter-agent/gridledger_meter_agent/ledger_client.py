"""The agent's view of the ledger: submitting energy transactions to the endorser and asking
a committer. Readings go through the outbox (sender.py); energy transactions are sent here
directly, because the agent derives everything it needs about contracts from the ledger
again after a restart, so they need no local queue."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import grpc

from gridledger.committer.v1 import committer_pb2, committer_pb2_grpc
from gridledger.common.v1 import energy_pb2, envelope_pb2, transaction_pb2
from gridledger.endorser.v1 import endorser_pb2, endorser_pb2_grpc
from gridledger_core.ledger import schema
from gridledger_core.rpc.backoff import Backoff, retry_after_ms
from gridledger_core.signing_identity import envelope_tx_id

TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.RESOURCE_EXHAUSTED}
SUBMIT_BACKOFF = Backoff(base_s=0.5, cap_s=5.0)


class Refused(Exception):
    """The endorser refused the transaction for good (the details name the rule)."""

    def __init__(self, status: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{status.name}: {details}")
        self.status = status
        self.details = details


class LedgerClient:
    def __init__(self, endorser: endorser_pb2_grpc.EndorserServiceStub,
                 committer: committer_pb2_grpc.CommitterServiceStub,
                 timeout: float = 10.0, backoff: Backoff = SUBMIT_BACKOFF,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.endorser = endorser
        self.committer = committer
        self.timeout = timeout
        self.backoff = backoff
        self.sleep = sleep

    def submit(self, envelope: envelope_pb2.SignedEnvelope, attempts: int = 5) -> str:
        """Submit, retrying the same envelope while the network is down or refuses for now
        (the ledger deduplicates by tx id), after the endorser's retry hint plus jitter.
        Raises Refused, or grpc.RpcError when it stays down."""
        for attempt in range(attempts):
            try:
                return self.endorser.SubmitTransaction(
                    endorser_pb2.SubmitTransactionRequest(envelope=envelope),
                    timeout=self.timeout).tx_id
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                if code == grpc.StatusCode.ALREADY_EXISTS:
                    return ""
                if code not in TRANSIENT:
                    raise Refused(code, exc.details()) from exc  # type: ignore[attr-defined]
                if attempt == attempts - 1:
                    raise
                self.sleep(self.backoff.delay(attempt, retry_after_ms(exc)))
        raise AssertionError("unreachable")

    def last_block_time(self) -> int:
        """The committer's last block's time (Unix seconds; 0 before any block)."""
        return self.committer.GetChainInfo(committer_pb2.GetChainInfoRequest(),
                                           timeout=self.timeout).last_block_time

    def transaction_code(self, tx_id: str) -> int | None:
        """The transaction's validation code if it is in a block, None if not (yet)."""
        try:
            return self.committer.GetTransaction(
                committer_pb2.GetTransactionRequest(tx_id=tx_id),
                timeout=self.timeout).validation_code
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                raise
            return None

    def wait_committed(self, tx_id: str, timeout: float = 60.0) -> tuple[int, str] | None:
        """(validation code, message) once the transaction is in a block; None on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                found = self.committer.GetTransaction(
                    committer_pb2.GetTransactionRequest(tx_id=tx_id), timeout=self.timeout)
                return found.validation_code, found.message
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                    raise
            time.sleep(0.5)
        return None

    def submit_and_wait(self, envelope: envelope_pb2.SignedEnvelope,
                        timeout: float = 60.0) -> tuple[str, int, str]:
        """Submit and wait for the block: (tx id, code, message). Raises Refused."""
        tx_id = self.submit(envelope)
        if not tx_id:  # already on the ledger: an earlier attempt got through
            tx_id = envelope_tx_id(envelope)
        outcome = self.wait_committed(tx_id, timeout)
        if outcome is None:
            raise TimeoutError(f"transaction {tx_id} not committed after {timeout:.0f} s")
        return tx_id, outcome[0], outcome[1]

    # -- queries ----------------------------------------------------------------------------

    def height(self) -> int:
        return self.committer.GetChainInfo(committer_pb2.GetChainInfoRequest(),
                                           timeout=self.timeout).height

    def plant(self, name: str) -> energy_pb2.PlantRecord | None:
        try:
            return self.committer.GetPlant(committer_pb2.GetPlantRequest(plant=name),
                                           timeout=self.timeout).plant
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                return None
            raise

    def contracts(self, *, meter: str = "", plant: str = "",
                  status: int = 0) -> Iterator[energy_pb2.SupplyContractRecord]:
        token = ""
        while True:
            page = self.committer.ListContracts(committer_pb2.ListContractsRequest(
                meter=meter, plant=plant, status=status, page_size=500, page_token=token),
                timeout=self.timeout)
            yield from page.contracts
            token = page.next_page_token
            if not token:
                return

    def contract(self, contract_id: str) -> committer_pb2.GetContractResponse:
        return self.committer.GetContract(
            committer_pb2.GetContractRequest(contract_id=contract_id), timeout=self.timeout)

    def carbon(self, account: str) -> energy_pb2.CarbonAccount:
        return self.committer.GetCarbonAccount(
            committer_pb2.GetCarbonAccountRequest(account=account), timeout=self.timeout).account


def readings(client: LedgerClient, meter: str,
             since: int = 0) -> Iterator[transaction_pb2.MeterReading]:
    """A meter's committed readings with interval_start >= `since`, oldest first. The first
    page starts at `since` (page tokens are state keys), so no older history is fetched."""
    token = schema.reading_key(meter, since) if since > 0 else ""
    while True:
        page = client.committer.ListReadings(committer_pb2.ListReadingsRequest(
            meter=meter, page_size=1000, page_token=token), timeout=client.timeout)
        yield from page.readings
        token = page.next_page_token
        if not token:
            return
