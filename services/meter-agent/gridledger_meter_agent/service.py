"""MeterAgentService: the agent's local status API."""

from __future__ import annotations

import grpc

from gridledger.meteragent.v1 import meteragent_pb2, meteragent_pb2_grpc
from gridledger_meter_agent.drivers.base import MeterDriver
from gridledger_meter_agent.outbox import Outbox
from gridledger_meter_agent.readings import IntervalReader
from gridledger_meter_agent.sender import OutboxSender


class MeterAgentServicer(meteragent_pb2_grpc.MeterAgentServiceServicer):
    def __init__(self, account: str, mode: str, driver: MeterDriver, reader: IntervalReader,
                 sender: OutboxSender, outbox: Outbox) -> None:
        self._account = account
        self._mode = mode
        self._driver = driver
        self._reader = reader
        self._sender = sender
        self._outbox = outbox

    def GetStatus(self, request: meteragent_pb2.GetStatusRequest,
                  context: grpc.ServicerContext) -> meteragent_pb2.GetStatusResponse:
        status = self._driver.status()
        device = "ok" if status.ok else f"{status.state.value}: {status.detail}"
        return meteragent_pb2.GetStatusResponse(
            account=self._account, mode=self._mode, readings_sent=self._sender.sent,
            readings_buffered=self._outbox.pending(),
            last_interval_start=max(self._reader.last_interval_start, 0),
            device_status=device)
