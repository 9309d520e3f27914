"""Meter mode's buying cycle (claims 1, 4, 5 of seed 002): choose a plant, sign a supply
contract with it, watch delivery, send the signed trade end, collect coins and the
certificate, and let the coins pay part of the next contract.

The cycle is a function of the ledger's state, re-read every step, so a restarted agent
picks up where it was: an open contract is tracked, an ended one waits for its coins, and a
new contract is signed only when neither exists. The contract's money due is reserved from
the meter's balance when it commits and paid to the plant when it ends; a contract still open
after its deadline plus the readings submission window is closed (pro rata), so a plant that
stops delivering does not block the meter.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from gridledger.common.v1 import energy_pb2, envelope_pb2, settlement_pb2
from gridledger.meteragent.v1 import meteragent_pb2, meteragent_pb2_grpc
from gridledger_core.energy.certificate import avoided_grams
from gridledger_core.energy.terms import TERMS_FORMAT, amount_micro, max_coins
from gridledger_core.genesis import Genesis
from gridledger_core.identity import Role
from gridledger_core.ledger.errors import Code
from gridledger_core.plants import ScoringWeights
from gridledger_core.rpc.tls import TlsFiles, secure_channel
from gridledger_core.signing_identity import SigningIdentity
from gridledger_meter_agent.directory import PlantDirectory, RankedDirectory
from gridledger_meter_agent.energy_metrics import (
    COINS_RECEIVED,
    CONTRACTS,
    ENERGY_ERRORS,
    TRADE_ENDS,
)
from gridledger_meter_agent.ledger_client import LedgerClient, Refused
from gridledger_meter_agent.neighbours import NeighbourPoller

log = logging.getLogger(__name__)
Status = energy_pb2.ContractStatus

# How long an ended contract may wait for its coins before the meter buys again without them.
COIN_WAIT_S = 600


@dataclass(frozen=True)
class BuyerConfig:
    contract_wh: int  # 0: never buy on its own (RankPlants still works)
    weights: ScoringWeights
    use_coins: bool = True


class TermsRejected(Exception):
    """The plant's signed terms are not what was asked for; nothing is countersigned."""


class Buyer:
    def __init__(self, identity: SigningIdentity, genesis: Genesis, ledger: LedgerClient,
                 directory: PlantDirectory, neighbours: NeighbourPoller | None,
                 config: BuyerConfig, tls: TlsFiles, certificate_dir: Path) -> None:
        self.identity = identity
        self.genesis = genesis
        self.ledger = ledger
        self.directory = directory
        self.neighbours = neighbours
        self.config = config
        self.tls = tls
        self.certificate_dir = certificate_dir
        self.contracts = 0
        self.coins_received = 0
        self.status = "idle"
        # Whether the meter may trade yet (main.py: its onboarding history is committed).
        self.ready: Callable[[], bool] = lambda: True

    def rank(self, energy_wh: int | None = None) -> RankedDirectory:
        return self.directory.rank(energy_wh or self.config.contract_wh or 1000,
                                   self.config.weights)

    # -- one step of the cycle --------------------------------------------------------------

    def step(self) -> None:
        me = self.identity.name
        self._collect_certificates()
        open_contracts = list(self.ledger.contracts(meter=me, status=Status.CONTRACT_STATUS_OPEN))
        if open_contracts:
            self._track(open_contracts[0])
            return
        ended = [c for c in self.ledger.contracts(meter=me, status=Status.CONTRACT_STATUS_ENDED)
                 if avoided_grams(c.delivered_wh, self.genesis.carbon_grams_per_kwh) > 0]
        if any(time.time() - c.ended_at < COIN_WAIT_S for c in ended) and self.config.use_coins:
            self.status = f"waiting for the carbon coins of {ended[0].contract_id[:12]}"
            return
        if self.config.contract_wh <= 0:
            self.status = "idle (not buying)"
            return
        if not self.ready():
            self.status = "posting onboarding history before buying"
            return
        if self.neighbours is not None and self.neighbours.rounds == 0:
            self.status = "asking neighbours before choosing a plant"
            return
        self._buy()

    def _track(self, contract: energy_pb2.SupplyContractRecord) -> None:
        view = self.ledger.contract(contract.contract_id)
        self.status = (f"contract {contract.contract_id[:12]} with {contract.plant}: "
                       f"{view.attributed_wh}/{contract.energy_wh} Wh delivered")
        if view.attributed_wh < contract.energy_wh:
            if time.time() > contract.deliver_by + self.genesis.reading_submission_window_seconds:
                self._close(contract)
            return
        body = energy_pb2.TradeEnd(contract_id=contract.contract_id,
                                   delivered_wh=contract.energy_wh)
        tx_id, code, message = self.ledger.submit_and_wait(
            self.identity.new_transaction("trade_end", body))
        if code == Code.TX_VALIDATION_CODE_VALID:
            TRADE_ENDS.inc()
            log.info("trade end %s for contract %s", tx_id, contract.contract_id)
        else:
            log.warning("trade end of %s invalid: %s", contract.contract_id, message)

    def _close(self, contract: energy_pb2.SupplyContractRecord) -> None:
        """End a contract its plant did not fulfil by its deadline: paid pro rata, the rest
        of the escrow released, and the meter free to buy again."""
        tx_id, code, message = self.ledger.submit_and_wait(self.identity.new_transaction(
            "close_contract", settlement_pb2.CloseContract(contract_id=contract.contract_id)))
        if code == Code.TX_VALIDATION_CODE_VALID:
            log.info("closed expired contract %s (%s)", contract.contract_id, tx_id)
        else:
            log.warning("closing %s invalid: %s", contract.contract_id, message)

    def _collect_certificates(self) -> None:
        for contract in self.ledger.contracts(meter=self.identity.name,
                                              status=Status.CONTRACT_STATUS_ISSUED):
            path = self.certificate_dir / f"{contract.contract_id}.cert"
            if path.exists():
                continue
            view = self.ledger.contract(contract.contract_id)
            self.certificate_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(view.certificate.SerializeToString())
            tmp.replace(path)  # whole file or none, so a crash never leaves half a certificate
            self.coins_received += contract.coins_issued
            COINS_RECEIVED.inc(contract.coins_issued)
            log.info("received %d carbon coins and certificate %s", contract.coins_issued, path)

    def _buy(self) -> None:
        energy_wh = self.config.contract_wh
        ranked = self.rank(energy_wh)
        winner = ranked.ranking.winner
        if winner is None:
            self.status = f"no known plant can supply {energy_wh} Wh ({len(ranked.records)} known)"
            return
        record = ranked.records[winner.plant_id]
        coins = 0
        if self.config.use_coins:
            balance = self.ledger.carbon(self.identity.name).coins
            coins = min(balance, max_coins(amount_micro(record.price_micro_per_kwh, energy_wh),
                                           record.coin_value_micro))
        self.status = f"proposing {energy_wh} Wh to {winner.plant_id} ({coins} coins)"
        terms = self._propose(record, energy_wh, coins)
        self._check_terms(terms, record, energy_wh, coins)
        envelope = self.identity.new_transaction("supply_contract",
                                                 energy_pb2.SupplyContract(plant_terms=terms))
        tx_id, code, message = self.ledger.submit_and_wait(envelope)
        if code != Code.TX_VALIDATION_CODE_VALID:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, f"contract {tx_id}: {message}")
        self.contracts += 1
        CONTRACTS.labels("meter").inc()
        log.info("contract with %s for %d Wh committed (%s); %s", winner.plant_id, energy_wh,
                 tx_id, ranked.ranking.explanation.splitlines()[1])

    def _propose(self, record: energy_pb2.PlantRecord, energy_wh: int,
                 coins: int) -> envelope_pb2.SignedEnvelope:
        with secure_channel(record.endpoint, self.tls) as channel:
            stub = meteragent_pb2_grpc.MeterAgentServiceStub(channel)
            return stub.ProposeContract(meteragent_pb2.ProposeContractRequest(
                meter=self.identity.name, energy_wh=energy_wh, coins_paid=coins),
                timeout=10).terms

    def _check_terms(self, envelope: envelope_pb2.SignedEnvelope,
                     record: energy_pb2.PlantRecord, energy_wh: int, coins: int) -> None:
        """Countersign only what was asked for, at the price the ranking used, signed by the
        plant itself."""
        signer = self.genesis.membership.verify(envelope.signer_certificate, envelope.signature,
                                                envelope.payload, int(time.time()))
        terms = energy_pb2.SupplyContractTerms.FromString(envelope.payload)
        expected = (TERMS_FORMAT, self.identity.name, record.plant, record.price_micro_per_kwh,
                    energy_wh, coins)
        got = (terms.format, terms.meter, terms.plant, terms.price_micro_per_kwh,
               terms.energy_wh, terms.coins_paid)
        if signer.name != record.plant or signer.role != Role.PLANT or got != expected:
            raise TermsRejected(f"terms from {signer.name} are {got}, expected {expected}")
        now = int(time.time())
        longest = self.genesis.settlement.max_contract_seconds
        if not now < terms.deliver_by <= now + longest:
            raise TermsRejected(f"terms from {signer.name} deliver by {terms.deliver_by}, not "
                                f"within the next {longest} s")

    def run(self, stop: threading.Event, wake: threading.Event | None = None) -> None:
        while not stop.is_set():
            try:
                self.step()
            except Exception as exc:  # network trouble or a refusal: say so, retry later
                ENERGY_ERRORS.labels(type(exc).__name__).inc()
                self.status = f"error: {exc}"
                log.warning("energy step failed: %s", exc)
            if wake is not None:
                wake.wait(3.0)
                wake.clear()
            else:
                stop.wait(3.0)
