"""Settlement mode: the initiating organisation's settlement agent (issue 14, items 5 and 6).

Who and why: the ledger accepts `settle_slot` only from a settlement-role account of the
genesis initiating organisation, and every figure of a settlement is computed by the rule
from the ledger (the transaction carries only the slot). So this agent decides nothing but
*when*: it runs in its own meter-agent process (`--mode settlement --name settlement`), like
the issuer, so the key lives in one small process that does nothing else.

What it does, judged by the latest committed block's time (never this machine's clock, so
it submits what the ledger will accept at that time, and its view of "due" is the same as
any replica's):

* every slot that has trades, is not settled (no `settlement/<slot>`) and whose readings
  deadline (slot end + genesis readings.submission_window_seconds) has passed gets one
  SettleSlot;
* every open supply contract past its `deliver_by` plus the readings window gets one
  CloseContract (it ends pro rata; its parties may close it too, whoever comes first).

Exactly-once is the ledger's job: a second SettleSlot for a settled slot, or a CloseContract
for a contract no longer open, is refused and changes nothing. So a crash, a restart or two
agents at once can delay settlement but never double it. The agent's own work is bounded:
slots are found with one-trade probes from a cursor (the earliest slot that may still need
settling), at most MAX_PROBES probes and MAX_SUBMITS submissions per pass; a slot or contract
that failed waits with exponential backoff (capped) before it is tried again. While passes
fail, or some slot keeps failing, the node reports NOT_SERVING (as the other loops do) and
keeps retrying.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from prometheus_client import Counter, Gauge

from gridledger.committer.v1 import committer_pb2
from gridledger.common.v1 import block_pb2, energy_pb2, settlement_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.ledger import schema
from gridledger_core.ledger.errors import Code
from gridledger_core.signing_identity import SigningIdentity
from gridledger_meter_agent.ledger_client import LedgerClient, Refused
from gridledger_meter_agent.loop_health import (
    OWN,
    UNHEALTHY_AFTER,
    UNREACHABLE,
    FailingPasses,
    kind_of,
)

log = logging.getLogger(__name__)

MAX_PROBES = 200  # slot probes per pass (2 committer calls each)
MAX_SUBMITS = 10  # transactions per pass
RETRY_FIRST_S = 5.0
RETRY_MAX_S = 300.0
# A slot whose last submission found the endorser unreachable is tried again within this: its
# settlement (and the agent's readiness) comes back soon after the endorser does.
UNREACHABLE_RETRY_MAX_S = 30.0
COMMIT_TIMEOUT_S = 60.0
MIN_PASS_INTERVAL_S = 1.0  # at most one pass per second, however fast blocks come
COMMITTED, ALREADY_DONE, FAILED = "committed", "already done", "failed"

SLOTS_SETTLED = Counter("gridledger_settler_slots_settled",
                        "Slots this agent settled (SettleSlot committed VALID).")
CONTRACTS_CLOSED = Counter("gridledger_settler_contracts_closed",
                           "Supply contracts past deliver_by this agent closed.")
SUBMIT_FAILURES = Counter("gridledger_settler_failures",
                          "Settlement submissions that failed, by what and why.",
                          ["what", "reason"])
BACKLOG = Gauge("gridledger_settler_backlog_slots",
                "Slots past their readings deadline with trades and no settlement (last pass).")
LAST_SETTLED = Gauge("gridledger_settler_last_settled_slot",
                     "Start (Unix seconds) of the latest slot this agent saw settled.")
SETTLED_WH = Counter("gridledger_settler_traded_wh", "Traded Wh of the slots this agent settled.")
IMBALANCE_WH = Counter("gridledger_settler_imbalance_wh",
                       "Imbalance Wh of the slots this agent settled.", ["kind"])


@dataclass
class _Retry:
    """Backoff state of one slot or contract that failed."""

    failures: int = 0  # of every kind, for the backoff
    own: int = 0  # its own failures (refused, invalid, a bug) since it last worked
    unreachable: int = 0  # the endorser or committer unreachable, in a row

    def failed(self, now: float, cause: BaseException | None) -> None:
        """`cause`: the exception the submission ended with (None: refused or invalid)."""
        self.failures += 1
        kind = kind_of(cause)
        if kind == OWN:
            self.own += 1
            self.unreachable = 0
        elif kind == UNREACHABLE:
            self.unreachable += 1
        cap = UNREACHABLE_RETRY_MAX_S if kind == UNREACHABLE else RETRY_MAX_S
        self.not_before = now + min(RETRY_FIRST_S * 2 ** (self.failures - 1), cap)


@dataclass
class PassResult:
    settled: list[int] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    backlog: int = 0


class Settler:
    def __init__(self, identity: SigningIdentity, genesis: Genesis, ledger: LedgerClient,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.identity = identity
        self.genesis = genesis
        self.ledger = ledger
        self.clock = clock
        self.slot_seconds = genesis.market.slot_seconds
        self.window = genesis.reading_submission_window_seconds
        self.cursor = 0  # every slot with trades before it is settled
        self.retries: dict[str, _Retry] = {}
        self.slots_settled = 0
        self.contracts_closed = 0
        self.last_settled = 0
        self.status = "starting"

    # -- what the ledger says ---------------------------------------------------------------

    def block_time(self) -> int | None:
        """Time of the latest committed block (None before the first one after genesis)."""
        height = self.ledger.height()
        if height == 0:
            return None
        block = self.ledger.committer.GetBlock(committer_pb2.GetBlockRequest(number=height - 1),
                                               timeout=self.ledger.timeout).block
        return block_pb2.BlockHeader.FromString(block.header).timestamp.seconds

    def deadline(self, slot: int) -> int:
        """Block time after which `slot` may be settled: its end plus the readings window."""
        return slot + self.slot_seconds + self.window

    def settled(self, slot: int) -> bool:
        return self._state(schema.settlement_key(slot)) is not None

    def _state(self, key: str) -> bytes | None:
        found = self.ledger.committer.GetState(committer_pb2.GetStateRequest(key=key),
                                               timeout=self.ledger.timeout)
        return found.value if found.found else None

    def _first_trade_slot(self, at_or_after: int) -> int | None:
        """The earliest slot >= `at_or_after` with a trade (trades are keyed by slot, and
        page tokens are state keys, so one page of one trade answers it)."""
        page = self.ledger.committer.ListTrades(committer_pb2.ListTradesRequest(
            page_size=1, page_token=schema.trade_key(max(at_or_after, 0), 0)),
            timeout=self.ledger.timeout)
        return page.trades[0].slot_start if page.trades else None

    def due_slots(self, block_time: int) -> list[int]:
        """Unsettled slots with trades whose deadline has passed by `block_time`, oldest
        first; advances the cursor past the settled ones at its front."""
        due: list[int] = []
        probe = self.cursor
        front = True  # every slot seen so far is settled
        for _ in range(MAX_PROBES):
            slot = self._first_trade_slot(probe)
            if slot is None or self.deadline(slot) >= block_time:
                break
            if self.settled(slot):
                self._saw_settled(slot)
                if front:
                    self.cursor = slot + 1
            else:
                front = False
                due.append(slot)
            probe = slot + 1
        return due

    def closable(self, contract: energy_pb2.SupplyContractRecord) -> int:
        """Block time after which the contract may be closed: its deliver_by plus the
        readings window (its last interval's reading may still come until then)."""
        return contract.deliver_by + self.window

    def expired_contracts(self, block_time: int) -> list[energy_pb2.SupplyContractRecord]:
        """Open supply contracts closable by `block_time` (bounded)."""
        expired = []
        for contract in self.ledger.contracts(status=energy_pb2.CONTRACT_STATUS_OPEN):
            if contract.deliver_by and self.closable(contract) < block_time:
                expired.append(contract)
                if len(expired) >= MAX_SUBMITS:
                    break
        return expired

    # -- one pass ---------------------------------------------------------------------------

    def run_once(self) -> PassResult:
        result = PassResult()
        block_time = self.block_time()
        if block_time is None:
            self.status = "waiting for the first block"
            return result
        due = self.due_slots(block_time)
        result.backlog = len(due)
        BACKLOG.set(len(due))
        submitted = 0
        for slot in due:
            if submitted >= MAX_SUBMITS:
                break
            key = f"slot/{slot}"
            if not self._may_try(key):
                continue
            submitted += 1
            body = settlement_pb2.SettleSlot(slot_start=slot)
            outcome = self._submit(key, "settle_slot", body, lambda s=slot: self.settled(s))
            if outcome == COMMITTED:
                result.settled.append(slot)
                self._count_settlement(slot)
            elif outcome == FAILED:
                result.failed.append(key)
        for contract in self.expired_contracts(block_time):
            key = f"contract/{contract.contract_id}"
            if submitted >= MAX_SUBMITS or not self._may_try(key):
                continue
            submitted += 1
            body = settlement_pb2.CloseContract(contract_id=contract.contract_id)
            outcome = self._submit(key, "close_contract", body,
                                   lambda c=contract.contract_id: not self._open(c))
            if outcome == COMMITTED:
                result.closed.append(contract.contract_id)
                self.contracts_closed += 1
                CONTRACTS_CLOSED.inc()
            elif outcome == FAILED:
                result.failed.append(key)
        self.status = (f"{self.slots_settled} slots settled, {self.contracts_closed} contracts "
                       f"closed; {len(due)} slots due at block time {block_time}")
        return result

    def _may_try(self, key: str) -> bool:
        retry = self.retries.get(key)
        return retry is None or self.clock() >= retry.not_before

    def _submit(self, key: str, body_field: str, body: object,
                done: Callable[[], bool]) -> str:
        """Submit one transaction and wait for its block: COMMITTED, ALREADY_DONE (the
        ledger shows the work done by someone else or an earlier attempt) or FAILED (to be
        retried after a backoff)."""
        what = body_field
        try:
            tx_id, code, message = self.ledger.submit_and_wait(
                self.identity.new_transaction(body_field, body),  # type: ignore[arg-type]
                timeout=COMMIT_TIMEOUT_S)
        except Refused as exc:
            reason, detail, cause = exc.status.name, exc.details, None
        except (grpc.RpcError, TimeoutError) as exc:
            reason, detail, cause = type(exc).__name__, str(exc), exc
        else:
            cause = None
            if code == Code.TX_VALIDATION_CODE_VALID:
                self.retries.pop(key, None)
                log.info("%s %s committed (%s)", what, key, tx_id)
                return COMMITTED
            reason, detail = Code.Name(code), message
        if done():  # e.g. another agent or an earlier attempt got there first
            self.retries.pop(key, None)
            log.info("%s %s: already done (%s: %s)", what, key, reason, detail)
            return ALREADY_DONE
        SUBMIT_FAILURES.labels(what, reason).inc()
        retry = self.retries.setdefault(key, _Retry())
        retry.failed(self.clock(), cause)
        log.warning("%s %s failed (%d in a row): %s %s", what, key, retry.failures, reason,
                    detail)
        return FAILED

    def _open(self, contract_id: str) -> bool:
        record = self.ledger.contract(contract_id).contract
        return record.status == energy_pb2.CONTRACT_STATUS_OPEN

    def _count_settlement(self, slot: int) -> None:
        self.slots_settled += 1
        SLOTS_SETTLED.inc()
        raw = self._state(schema.settlement_key(slot))
        if raw is None:
            return
        record = settlement_pb2.SlotSettlement.FromString(raw)
        SETTLED_WH.inc(record.traded_wh)
        IMBALANCE_WH.labels("shortfall").inc(record.shortfall_wh)
        IMBALANCE_WH.labels("surplus").inc(record.surplus_wh)
        self._saw_settled(slot)

    def _saw_settled(self, slot: int) -> None:
        if slot > self.last_settled:
            self.last_settled = slot
            LAST_SETTLED.set(slot)

    def stuck(self) -> list[str]:
        """Slots and contracts that failed UNHEALTHY_AFTER times or more on their own account
        (refused, invalid), not counting their endorser or committer away."""
        return sorted(k for k, r in self.retries.items() if r.own >= UNHEALTHY_AFTER)

    def waiting(self) -> list[str]:
        """Slots and contracts whose last UNHEALTHY_AFTER submissions or more found their
        endorser or committer unreachable."""
        return sorted(k for k, r in self.retries.items() if r.unreachable >= UNHEALTHY_AFTER)

    def run(self, stop: threading.Event, wake: threading.Event,
            on_health: Callable[[bool], None] = lambda serving: None,
            on_ready: Callable[[bool], None] = lambda ready: None) -> None:
        """Passes until stopped: after every commit (wake) or every few seconds. Not live
        (`on_health`) while its own passes fail or some slot or contract keeps failing; not
        ready (`on_ready`) while passes, or the submissions of a slot or contract, find its
        committer or endorser unreachable."""
        passes = FailingPasses(on_health, on_ready)
        while not stop.is_set():
            try:
                self.run_once()
                passes.passed(not self.stuck(), not self.waiting())
            except Exception as exc:  # the committer away, a bug: say so, retry
                failed = passes.failed(not self.stuck(), cause=exc,
                                       ready_otherwise=not self.waiting())
                self.status = f"error: {exc}"
                log.warning("settlement pass failed (%d in a row): %s", failed, exc)
            if stop.wait(MIN_PASS_INTERVAL_S):
                break
            failed = passes.in_a_row
            wake.wait(min(2.0 * 2 ** failed, 30.0) if failed else 2.0)
            wake.clear()


