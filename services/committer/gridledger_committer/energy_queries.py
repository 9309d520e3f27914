"""CommitterService queries of new-energy trading: plants, contracts, carbon accounts.

A mixin of CommitterServicer (which provides `self._ledger`), so the energy queries live in
one module of their own."""

from __future__ import annotations

import grpc

from gridledger.committer.v1 import committer_pb2
from gridledger.common.v1 import energy_pb2, envelope_pb2
from gridledger_core.ledger import schema
from gridledger_core.ledger.ledger import Ledger

DEFAULT_PAGE = 100
MAX_PAGE = 1000


def contract_attributed_wh(contract: energy_pb2.SupplyContractRecord) -> int:
    """What a trade end submitted now would find delivered: the ledger attributes energy as
    readings commit (rules/energy_delivery.py) and keeps the sum on the record."""
    if contract.status != energy_pb2.CONTRACT_STATUS_OPEN:
        return contract.delivered_wh
    return contract.attributed_wh


class EnergyQueries:
    _ledger: Ledger

    def GetPlant(self, request: committer_pb2.GetPlantRequest,
                 context: grpc.ServicerContext) -> committer_pb2.GetPlantResponse:
        raw = self._ledger.get_state(schema.plant_key(request.plant)) if request.plant else None
        if raw is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"plant {request.plant!r} never announced")
        return committer_pb2.GetPlantResponse(plant=energy_pb2.PlantRecord.FromString(raw))

    def ListContracts(self, request: committer_pb2.ListContractsRequest,
                      context: grpc.ServicerContext) -> committer_pb2.ListContractsResponse:
        size = request.page_size or DEFAULT_PAGE
        if size > MAX_PAGE:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"page_size above {MAX_PAGE}")
        start = request.page_token or None
        if start is not None and not start.startswith(schema.CONTRACT_PREFIX):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_token is not from this listing")
        response = committer_pb2.ListContractsResponse()
        # A scan filtered in memory: fine for a consortium's contract volume; an index per
        # meter/status is the change to make if it ever is not.
        for key, raw in self._ledger.scan_state(schema.CONTRACT_PREFIX, start=start):
            contract = energy_pb2.SupplyContractRecord.FromString(raw)
            if ((request.meter and contract.meter != request.meter)
                    or (request.plant and contract.plant != request.plant)
                    or (request.status and contract.status != request.status)):
                continue
            if len(response.contracts) == size:
                response.next_page_token = key
                break
            response.contracts.append(contract)
        return response

    def GetContract(self, request: committer_pb2.GetContractRequest,
                    context: grpc.ServicerContext) -> committer_pb2.GetContractResponse:
        raw = (self._ledger.get_state(schema.contract_key(request.contract_id))
               if request.contract_id else None)
        if raw is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"contract {request.contract_id!r} not found")
        contract = energy_pb2.SupplyContractRecord.FromString(raw)
        response = committer_pb2.GetContractResponse(
            contract=contract, attributed_wh=contract_attributed_wh(contract))
        cert = self._ledger.get_state(schema.certificate_key(contract.contract_id))
        if cert is not None:
            response.certificate.CopyFrom(envelope_pb2.SignedEnvelope.FromString(cert))
        return response

    def GetCarbonAccount(self, request: committer_pb2.GetCarbonAccountRequest,
                         context: grpc.ServicerContext
                         ) -> committer_pb2.GetCarbonAccountResponse:
        if not request.account:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "account is required")
        raw = self._ledger.get_state(schema.carbon_key(request.account))
        account = (energy_pb2.CarbonAccount.FromString(raw) if raw is not None
                   else energy_pb2.CarbonAccount(account=request.account))
        return committer_pb2.GetCarbonAccountResponse(account=account)
