"""MeterAgentService: status, the plant directory for neighbours, plant ranking (meter mode)
and contract proposals (plant mode)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc

from gridledger.meteragent.v1 import meteragent_pb2, meteragent_pb2_grpc
from gridledger_core.plants.evidence import record_reliability_bp
from gridledger_meter_agent.buyer import Buyer
from gridledger_meter_agent.directory import PlantDirectory
from gridledger_meter_agent.drivers.base import MeterDriver
from gridledger_meter_agent.issuer import Issuer
from gridledger_meter_agent.outbox import Outbox
from gridledger_meter_agent.plant import PlantAgent, ProposalRefused
from gridledger_meter_agent.readings import IntervalReader
from gridledger_meter_agent.sender import OutboxSender
from gridledger_meter_agent.settler import Settler


@dataclass
class AgentParts:
    """What this agent runs; the reading pipeline is absent in issuer and settlement mode."""

    account: str
    mode: str
    driver: MeterDriver | None = None
    reader: IntervalReader | None = None
    sender: OutboxSender | None = None
    outbox: Outbox | None = None
    directory: PlantDirectory | None = None
    buyer: Buyer | None = None
    plant: PlantAgent | None = None
    issuer: Issuer | None = None
    settler: Settler | None = None


class MeterAgentServicer(meteragent_pb2_grpc.MeterAgentServiceServicer):
    def __init__(self, parts: AgentParts) -> None:
        self._p = parts

    def GetStatus(self, request: meteragent_pb2.GetStatusRequest,
                  context: grpc.ServicerContext) -> meteragent_pb2.GetStatusResponse:
        p = self._p
        response = meteragent_pb2.GetStatusResponse(account=p.account, mode=p.mode)
        if p.driver is not None and p.reader is not None and p.sender and p.outbox:
            status = p.driver.status()
            response.device_status = "ok" if status.ok else f"{status.state.value}: {status.detail}"
            response.readings_sent = p.sender.sent
            response.readings_buffered = p.outbox.pending()
            response.last_interval_start = max(p.reader.last_interval_start, 0)
        if p.directory is not None:
            response.plants_known = len(p.directory)
        if p.buyer is not None:
            response.contracts = p.buyer.contracts
            response.coins = p.buyer.coins_received
            response.energy_status = p.buyer.status
        if p.plant is not None:
            response.contracts = p.plant.contracts_signed
            response.energy_status = p.plant.status
        if p.issuer is not None:
            response.coins = p.issuer.coins_issued
            response.energy_status = p.issuer.status
        if p.settler is not None:
            response.energy_status = p.settler.status
        return response

    def GetPlantDirectory(self, request: meteragent_pb2.GetPlantDirectoryRequest,
                          context: grpc.ServicerContext
                          ) -> meteragent_pb2.GetPlantDirectoryResponse:
        response = meteragent_pb2.GetPlantDirectoryResponse(agent=self._p.account)
        if self._p.directory is not None:
            for plant, entry in self._p.directory.entries():
                response.entries.append(meteragent_pb2.DirectoryEntry(
                    plant=plant, price_micro_per_kwh=entry.record.price_micro_per_kwh,
                    reliability_bp=entry.reliability_bp or 0,  # 0 also for unscored
                    remaining_wh=entry.record.remaining_wh,
                    source=entry.source,
                    announcement_tx_id=entry.record.announcement_tx_id))
        elif self._p.plant is not None:  # a plant vouches for itself
            record = self._p.plant.ledger.plant(self._p.account)
            if record is not None:
                response.entries.append(meteragent_pb2.DirectoryEntry(
                    plant=record.plant, price_micro_per_kwh=record.price_micro_per_kwh,
                    reliability_bp=record_reliability_bp(
                        record, int(time.time()),
                        self._p.plant.config.close_after_s) or 0,  # 0 also for unscored
                    remaining_wh=record.remaining_wh, source="self",
                    announcement_tx_id=record.announcement_tx_id))
        return response

    def RankPlants(self, request: meteragent_pb2.RankPlantsRequest,
                   context: grpc.ServicerContext) -> meteragent_pb2.RankPlantsResponse:
        buyer = self._p.buyer
        if buyer is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"{self._p.account} runs in {self._p.mode} mode; only meters rank plants")
        try:
            ranked = buyer.rank(request.energy_wh or None)
        except grpc.RpcError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"cannot read the ledger: {exc.details()}")  # type: ignore[attr-defined]
        ranking = ranked.ranking
        return meteragent_pb2.RankPlantsResponse(
            energy_wh=ranking.requested_wh, price_weight=ranking.weights.price,
            reliability_weight=ranking.weights.reliability,
            ranked=[meteragent_pb2.RankedPlant(
                rank=s.rank, plant=s.plant_id, price_micro_per_kwh=s.candidate.price_micro_per_kwh,
                price_bp=s.price_bp, reliability_bp=s.candidate.reliability_bp,
                score_bp=s.score_bp, remaining_wh=s.candidate.remaining_wh,
                source=ranked.sources.get(s.plant_id, ""), explanation=s.explanation)
                for s in ranking.ranked],
            excluded=[meteragent_pb2.ExcludedPlant(plant=e.candidate.plant_id, reason=e.reason)
                      for e in ranking.excluded],
            winner=ranking.winner.plant_id if ranking.winner else "",
            explanation=ranking.explanation, scored_at=ranked.scored_at)

    def ProposeContract(self, request: meteragent_pb2.ProposeContractRequest,
                        context: grpc.ServicerContext
                        ) -> meteragent_pb2.ProposeContractResponse:
        plant = self._p.plant
        if plant is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"{self._p.account} runs in {self._p.mode} mode, not as a plant")
        try:
            terms, contract_id = plant.propose(request.meter, request.energy_wh,
                                               request.coins_paid)
        except ProposalRefused as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT if exc.bad_request
                          else grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return meteragent_pb2.ProposeContractResponse(terms=terms, contract_id=contract_id)
