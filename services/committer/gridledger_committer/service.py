"""CommitterService: queries over the ledger and a stream of commit events."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from gridledger.committer.v1 import committer_pb2, committer_pb2_grpc
from gridledger.common.v1 import transaction_pb2
from gridledger_committer import market_queries
from gridledger_committer.energy_queries import EnergyQueries
from gridledger_committer.settlement_queries import SettlementQueries
from gridledger_core.ledger import schema
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.rpc.height_notifier import HeightNotifier

DEFAULT_PAGE = 100
MAX_PAGE = 1000


class CommitterServicer(EnergyQueries, SettlementQueries,
                        committer_pb2_grpc.CommitterServiceServicer):
    def __init__(self, ledger: Ledger, notifier: HeightNotifier) -> None:
        self._ledger = ledger
        self._notifier = notifier

    def GetChainInfo(self, request: committer_pb2.GetChainInfoRequest,
                     context: grpc.ServicerContext) -> committer_pb2.GetChainInfoResponse:
        # The time first: a block committed in between only makes the rest newer.
        last_block_time = self._ledger.tip_time()
        chain = self._ledger.chain
        return committer_pb2.GetChainInfoResponse(height=chain.height,
                                                  last_block_hash=chain.last_block_hash,
                                                  state_root=chain.state_root,
                                                  transactions=chain.transactions,
                                                  last_block_time=last_block_time)

    def GetBlock(self, request: committer_pb2.GetBlockRequest,
                 context: grpc.ServicerContext) -> committer_pb2.GetBlockResponse:
        found = self._ledger.get_block(request.number)
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"block {request.number} is not committed (height "
                          f"{self._ledger.height})")
        block, record = found
        return committer_pb2.GetBlockResponse(block=block,
                                              validation_codes=record.validation_codes,
                                              state_root=record.state_root,
                                              tx_ids=record.tx_ids)

    def GetTransaction(self, request: committer_pb2.GetTransactionRequest,
                       context: grpc.ServicerContext) -> committer_pb2.GetTransactionResponse:
        found = self._ledger.get_transaction(request.tx_id)
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"transaction {request.tx_id!r} not found")
        location, code, message, tx = found
        return committer_pb2.GetTransactionResponse(
            block_number=location.block_number, index=location.index, validation_code=code,
            message=message, transaction=tx)

    def GetState(self, request: committer_pb2.GetStateRequest,
                 context: grpc.ServicerContext) -> committer_pb2.GetStateResponse:
        if not request.key:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "key is required")
        value = self._ledger.get_state(request.key)
        return committer_pb2.GetStateResponse(found=value is not None, value=value or b"")

    def ListReadings(self, request: committer_pb2.ListReadingsRequest,
                     context: grpc.ServicerContext) -> committer_pb2.ListReadingsResponse:
        if not request.meter:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "meter is required")
        size = request.page_size or DEFAULT_PAGE
        if size > MAX_PAGE:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"page_size above {MAX_PAGE}")
        prefix = schema.reading_prefix(request.meter)
        start = request.page_token or None
        if start is not None and not start.startswith(prefix):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_token is not from this listing")
        page = list(self._ledger.scan_state(prefix, start=start, limit=size + 1))
        response = committer_pb2.ListReadingsResponse(
            readings=[transaction_pb2.MeterReading.FromString(v) for _, v in page[:size]])
        if len(page) > size:
            response.next_page_token = page[size][0]
        return response

    def ListOpenOrders(self, request: committer_pb2.ListOpenOrdersRequest,
                       context: grpc.ServicerContext) -> committer_pb2.ListOpenOrdersResponse:
        return market_queries.list_open_orders(self._ledger, request, context)

    def ListOrders(self, request: committer_pb2.ListOrdersRequest,
                   context: grpc.ServicerContext) -> committer_pb2.ListOrdersResponse:
        return market_queries.list_orders(self._ledger, request, context)

    def ListTrades(self, request: committer_pb2.ListTradesRequest,
                   context: grpc.ServicerContext) -> committer_pb2.ListTradesResponse:
        return market_queries.list_trades(self._ledger, request, context)

    def SubscribeCommits(self, request: committer_pb2.SubscribeCommitsRequest,
                         context: grpc.ServicerContext
                         ) -> Iterator[committer_pb2.SubscribeCommitsResponse]:
        number = request.start_number
        while context.is_active():
            if number >= self._ledger.height:
                if not self._notifier.wait_for_height(number + 1, 1.0):
                    return
                continue
            found = self._ledger.get_block(number)
            assert found is not None
            _, record = found
            yield committer_pb2.SubscribeCommitsResponse(
                number=number, block_hash=record.block_hash, state_root=record.state_root,
                results=[committer_pb2.TxResult(tx_id=tx_id, validation_code=code)
                         for tx_id, code in zip(record.tx_ids, record.validation_codes,
                                                strict=True)])
            number += 1
