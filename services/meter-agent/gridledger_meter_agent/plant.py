"""Plant mode (claim 2 of seed 002 and issue 6 item 4): announce identity, price, shortfall
windows and remaining energy as signed on-chain transactions, and sign supply-contract terms
for meters that propose a contract.

Remaining energy = the energy the plant offers (its forecast production over the next
24 hours, or a configured figure) minus what its open contracts still have to deliver. Each
announcement states the total contracted energy it accounts for; the ledger refuses it as
stale if a contract was committed meanwhile, and the plant simply announces again.

The terms it signs carry a delivery deadline (`contract_seconds` after signing); a contract
still open after that deadline plus the readings submission window is closed by the plant
(pro rata, CloseContract), which frees its capacity and gets it paid for what it delivered.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from gridledger.common.v1 import energy_pb2, envelope_pb2, settlement_pb2
from gridledger_core.energy.shortfall import windows_from_readings
from gridledger_core.energy.terms import amount_micro, contract_id, max_coins, new_terms
from gridledger_core.ledger.errors import Code
from gridledger_core.plants.reliability import DEFAULT_PARAMS
from gridledger_core.profiles.plant import PlantProfile
from gridledger_core.profiles.timegrid import SLOT_SECONDS
from gridledger_core.signing_identity import SigningIdentity
from gridledger_meter_agent.energy_metrics import ANNOUNCEMENTS, CONTRACTS, ENERGY_ERRORS
from gridledger_meter_agent.ledger_client import LedgerClient, Refused, readings
from gridledger_meter_agent.loop_health import FailingPasses, away

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlantConfig:
    price_micro_per_kwh: int
    threshold_w: int
    pv_panel_ids: tuple[str, ...]
    coin_value_micro: int
    endpoint: str
    announce_seconds: float
    offer_wh: int = 0  # 0: the simulated profile's forecast for the next 24 h
    supply_hours_utc: tuple[int, int] = (8, 15)
    offer_ttl_s: int = 300
    contract_seconds: int = 86_400  # deliver_by = signing time + this
    close_after_s: int = 3_600  # the ledger's readings submission window


class ProposalRefused(Exception):
    def __init__(self, reason: str, *, bad_request: bool = False) -> None:
        super().__init__(reason)
        self.bad_request = bad_request


class PlantAgent:
    def __init__(self, identity: SigningIdentity, ledger: LedgerClient, config: PlantConfig,
                 profile: PlantProfile | None) -> None:
        self.identity = identity
        self.ledger = ledger
        self.config = config
        self.profile = profile
        self.contracts_signed = 0
        self.status = "starting"
        self._lock = threading.Lock()

    # -- announcing -------------------------------------------------------------------------

    def shortfall_windows(self, now: int) -> list[tuple[int, int]]:
        start = now - DEFAULT_PARAMS.horizon_s
        if self.profile is not None:
            return self.profile.shortfall_windows(start, now, self.config.threshold_w)
        measured = [(r.interval_start, r.interval_seconds, r.produced_wh)
                    for r in readings(self.ledger, self.identity.name, since=start)]
        return windows_from_readings(measured, self.config.threshold_w,
                                     self.config.supply_hours_utc)

    def offer_wh(self, now: int) -> int:
        if self.config.offer_wh or self.profile is None:
            return self.config.offer_wh
        slots = 24 * 3600 // SLOT_SECONDS
        produced, _ = self.profile.slot_energy_mwh(now // SLOT_SECONDS, slots)
        return int(produced.sum()) // 1000

    def announcement(self, now: int) -> energy_pb2.PlantAnnouncement:
        record = self.ledger.plant(self.identity.name)
        open_contracts = self.ledger.contracts(plant=self.identity.name,
                                               status=energy_pb2.CONTRACT_STATUS_OPEN)
        undelivered = sum(c.energy_wh - c.attributed_wh for c in open_contracts)
        return energy_pb2.PlantAnnouncement(
            plant=self.identity.name, price_micro_per_kwh=self.config.price_micro_per_kwh,
            shortfall_windows=[energy_pb2.ShortfallWindow(start=s, end=e)
                               for s, e in self.shortfall_windows(now)],
            threshold_w=self.config.threshold_w,
            remaining_wh=max(0, self.offer_wh(now) - undelivered),
            contracted_wh=record.contracted_wh if record else 0,
            pv_panel_ids=list(self.config.pv_panel_ids),
            coin_value_micro=self.config.coin_value_micro, endpoint=self.config.endpoint)

    def announce_once(self) -> bool:
        body = self.announcement(int(time.time()))
        envelope = self.identity.new_transaction("plant_announcement", body)
        try:
            _, code, message = self.ledger.submit_and_wait(envelope)
        except Refused as exc:
            ANNOUNCEMENTS.labels("refused").inc()
            self.status = f"announcement refused: {exc}"
            log.warning("announcement refused: %s", exc)
            return False
        if code != Code.TX_VALIDATION_CODE_VALID:  # e.g. stale: a contract came in between
            ANNOUNCEMENTS.labels("invalid").inc()
            self.status = f"announcement invalid: {message}"
            log.info("announcement not valid (%s): %s", Code.Name(code), message)
            return False
        ANNOUNCEMENTS.labels("committed").inc()
        self.status = (f"announced {body.remaining_wh} Wh at {body.price_micro_per_kwh} µ/kWh, "
                       f"{len(body.shortfall_windows)} shortfall windows")
        return True

    def close_expired(self, now: int) -> int:
        """Close the plant's open contracts whose deadline (plus the submission window) has
        passed; returns how many closed."""
        closed = 0
        for contract in self.ledger.contracts(plant=self.identity.name,
                                              status=energy_pb2.CONTRACT_STATUS_OPEN):
            if now <= contract.deliver_by + self.config.close_after_s:
                continue
            envelope = self.identity.new_transaction(
                "close_contract", settlement_pb2.CloseContract(contract_id=contract.contract_id))
            try:
                _, code, message = self.ledger.submit_and_wait(envelope)
            except Refused as exc:  # e.g. the meter closed it first
                log.info("closing %s refused: %s", contract.contract_id, exc)
                continue
            if code == Code.TX_VALIDATION_CODE_VALID:
                closed += 1
                log.info("closed expired contract %s (%d of %d Wh delivered)",
                         contract.contract_id, contract.attributed_wh, contract.energy_wh)
            else:
                log.info("closing %s invalid: %s", contract.contract_id, message)
        return closed

    def run(self, stop: threading.Event,
            on_health: Callable[[bool], None] = lambda serving: None,
            on_ready: Callable[[bool], None] = lambda ready: None) -> None:
        """Announce until stopped; passes that keep failing make the plant's agent not live
        (a bug) or not ready (its endorser or committer away) until one works."""
        passes = FailingPasses(on_health, on_ready)
        while not stop.is_set():
            try:
                self.close_expired(int(time.time()))
                ok = self.announce_once()
                passes.passed()
            except Exception as exc:
                ENERGY_ERRORS.labels("announce").inc()
                self.status = f"cannot announce: {exc}"
                failed = passes.failed(cause=exc)
                if away(exc):
                    log.info("announcement waits (%d in a row): %s", failed, exc)
                else:
                    log.warning("announcement failed (%d in a row): %s", failed, exc)
                ok = False
            stop.wait(self.config.announce_seconds if ok else 3.0)

    # -- contracts --------------------------------------------------------------------------

    def propose(self, meter: str, energy_wh: int,
                coins_paid: int) -> tuple[envelope_pb2.SignedEnvelope, str]:
        """Sign terms for `meter` at the announced price if the ledger says the energy is
        there; raises ProposalRefused."""
        if not meter or energy_wh <= 0:
            raise ProposalRefused("meter and a positive energy_wh are required", bad_request=True)
        record = self.ledger.plant(self.identity.name)
        if record is None:
            raise ProposalRefused(f"{self.identity.name} has not announced yet")
        if energy_wh > record.remaining_wh:
            raise ProposalRefused(f"{self.identity.name} has only {record.remaining_wh} Wh "
                                  f"remaining, {energy_wh} Wh requested")
        amount = amount_micro(record.price_micro_per_kwh, energy_wh)
        if coins_paid > max_coins(amount, record.coin_value_micro):
            raise ProposalRefused(f"{coins_paid} coins would pay more than the contract's "
                                  f"{amount} µ", bad_request=True)
        panels = list(record.pv_panel_ids)
        terms = new_terms(meter=meter, plant=self.identity.name,
                          price_micro_per_kwh=record.price_micro_per_kwh, energy_wh=energy_wh,
                          pv_panel_id=panels[zlib.crc32(meter.encode()) % len(panels)],
                          plant_remaining_wh=record.remaining_wh, coins_paid=coins_paid,
                          coin_value_micro=record.coin_value_micro,
                          expires_at=int(time.time()) + self.config.offer_ttl_s,
                          deliver_by=int(time.time()) + self.config.contract_seconds)
        envelope = self.identity.sign_envelope(terms.SerializeToString())
        with self._lock:
            self.contracts_signed += 1
        CONTRACTS.labels("plant").inc()
        return envelope, contract_id(envelope.payload)
