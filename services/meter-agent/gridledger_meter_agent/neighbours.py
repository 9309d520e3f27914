"""Asking neighbouring meter-agents for their plant directories (claim 3 of seed 002).

Each round asks every neighbour once; a plant it names that this agent does not know yet is
checked against the ledger and only then added (source "neighbour:<name>")."""

from __future__ import annotations

import logging
import threading

import grpc

from gridledger.meteragent.v1 import meteragent_pb2, meteragent_pb2_grpc
from gridledger_meter_agent.directory import PlantDirectory
from gridledger_meter_agent.energy_metrics import DIRECTORY_HINTS

log = logging.getLogger(__name__)


class NeighbourPoller:
    def __init__(self, directory: PlantDirectory,
                 neighbours: dict[str, meteragent_pb2_grpc.MeterAgentServiceStub],
                 stop: threading.Event, period_s: float = 10.0) -> None:
        self._directory = directory
        self._neighbours = neighbours
        self._stop = stop
        self._period = period_s
        self.rounds = 0  # completed rounds: a meter asks its neighbours before it first buys

    def poll_once(self) -> None:
        for name, stub in sorted(self._neighbours.items()):
            try:
                answer = stub.GetPlantDirectory(meteragent_pb2.GetPlantDirectoryRequest(),
                                                timeout=5)
            except grpc.RpcError as exc:
                log.debug("neighbour %s: %s", name, exc.code())  # type: ignore[attr-defined]
                continue
            for entry in answer.entries:
                if self._directory.knows(entry.plant):
                    continue
                confirmed = self._directory.learn(entry.plant, f"neighbour:{name}")
                DIRECTORY_HINTS.labels("confirmed" if confirmed else "not_on_ledger").inc()
                if confirmed:
                    log.info("learned of plant %s from neighbour %s", entry.plant, name)
        self.rounds += 1

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:
                log.exception("neighbour poll")
            self._stop.wait(self._period)
