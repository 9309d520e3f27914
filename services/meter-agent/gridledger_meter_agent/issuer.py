"""Issuer mode: the initiating organisation's carbon coin issuer (claim 5 of seed 002).

Who and why: the ledger accepts coin issues only from an identity of the genesis initiating
organisation with the `issuer` role. This loop runs in its own meter-agent process of that
organisation (`--mode issuer --name issuer`), so the issuing key lives in one small process
that does nothing else: not in the endorser (which admits everyone's transactions and must
not be able to mint) and not under the `admin` identity operators use for the CLI.

Every few seconds (or when a block commits) it lists ended contracts and issues coins and a
certificate for each. Exactly-once is the ledger's job, not this loop's: a second issue for
the same contract is refused (STATE_CONFLICT), so a crash or a duplicate submission can
delay issuance but never double it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from gridledger.common.v1 import energy_pb2
from gridledger_core.energy.certificate import avoided_grams, issue_body
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.errors import Code
from gridledger_core.signing_identity import SigningIdentity
from gridledger_meter_agent.energy_metrics import CERTIFICATES_ISSUED, COINS_ISSUED
from gridledger_meter_agent.ledger_client import LedgerClient, Refused
from gridledger_meter_agent.loop_health import FailingPasses, away

log = logging.getLogger(__name__)

RESUBMIT_AFTER_S = 60.0


class Issuer:
    def __init__(self, identity: SigningIdentity, genesis: Genesis, ledger: LedgerClient) -> None:
        self.identity = identity
        self.genesis = genesis
        self.ledger = ledger
        self.coins_issued = 0
        self.certificates = 0
        self.status = "starting"
        self._submitted: dict[str, float] = {}  # contract id -> when its issue was last sent

    def issue_once(self) -> int:
        """Issue for every ended contract not in flight; returns how many were committed."""
        done = 0
        # A contract that delivered too little to earn a coin (e.g. closed with nothing
        # delivered) gets no coins and no certificate: the ledger refuses an issue of 0.
        ended = [c for c in self.ledger.contracts(status=energy_pb2.CONTRACT_STATUS_ENDED)
                 if avoided_grams(c.delivered_wh, self.genesis.carbon_grams_per_kwh) > 0]
        for contract in ended:
            sent = self._submitted.get(contract.contract_id)
            if sent is not None and time.monotonic() - sent < RESUBMIT_AFTER_S:
                continue
            self._submitted[contract.contract_id] = time.monotonic()
            body = issue_body(self.identity, contract, self.genesis, time.time())
            try:
                tx_id, code, message = self.ledger.submit_and_wait(
                    self.identity.new_transaction("carbon_coin_issue", body))
            except Refused as exc:  # e.g. already issued by an earlier run
                log.info("issue for %s refused: %s", contract.contract_id, exc)
                continue
            if code != Code.TX_VALIDATION_CODE_VALID:
                log.info("issue for %s invalid: %s", contract.contract_id, message)
                continue
            done += 1
            self.coins_issued += body.coins
            self.certificates += 1
            COINS_ISSUED.inc(body.coins)
            CERTIFICATES_ISSUED.inc()
            log.info("issued %d coins to %s for contract %s (%s)", body.coins, body.meter,
                     contract.contract_id, tx_id)
        pending = {c.contract_id for c in ended}
        self._submitted = {k: v for k, v in self._submitted.items() if k in pending}
        self.status = (f"{self.certificates} certificates, {self.coins_issued} coins issued; "
                       f"{len(ended) - done} ended contracts pending")
        return done

    def run(self, stop: threading.Event, wake: threading.Event,
            on_health: Callable[[bool], None] = lambda serving: None,
            on_ready: Callable[[bool], None] = lambda ready: None) -> None:
        """Passes until stopped: after every commit (wake) or every 3 s. Issuing is this
        agent's whole job, so passes that keep failing make it not live (a bug, its disk)
        or not ready (its committer or endorser away) until one works."""
        passes = FailingPasses(on_health, on_ready)
        while not stop.is_set():
            try:
                self.issue_once()
                passes.passed()
            except Exception as exc:
                self.status = f"error: {exc}"
                failed = passes.failed(cause=exc)
                if away(exc):
                    log.info("issuing waits (%d in a row): %s", failed, exc)
                else:
                    log.warning("issuing failed (%d in a row): %s", failed, exc)
            wake.wait(3.0)
            wake.clear()
