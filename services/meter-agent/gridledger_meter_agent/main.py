"""gridledger-meter-agent: a smart meter (or, with --mode plant, a plant's meter) on the chain.

It reads the device at every ledger interval, signs each reading, keeps it in a local LMDB
outbox and sends it to the endorser; with --backfill-hours a new simulated meter first
posts that much history (paced by --pace readings per second), which the forecaster needs.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Sequence

from gridledger.endorser.v1 import endorser_pb2_grpc
from gridledger.meteragent.v1 import meteragent_pb2, meteragent_pb2_grpc
from gridledger_core import node_config
from gridledger_core.genesis import Genesis
from gridledger_core.profiles.household import HouseholdProfile
from gridledger_core.profiles.plant import PlantProfile
from gridledger_core.rpc.server import NodeServer, split_host_port
from gridledger_core.rpc.tls import TlsFiles, secure_channel
from gridledger_core.signing_identity import SigningIdentity
from gridledger_meter_agent.drivers import MeterDriver, ModbusTcpMeter, SimulatedMeter
from gridledger_meter_agent.outbox import Outbox
from gridledger_meter_agent.readings import IntervalReader
from gridledger_meter_agent.sender import OutboxSender
from gridledger_meter_agent.service import MeterAgentServicer

log = logging.getLogger(__name__)


def make_driver(args: object, name: str, mode: str, now: int) -> MeterDriver:
    if args.driver == "modbus":
        host, port = split_host_port(args.modbus_address)
        return ModbusTcpMeter(host, port)
    seed = zlib.crc32(name.encode())
    profile = (PlantProfile(seed=seed) if mode == "plant" else
               HouseholdProfile(seed=seed, pv_kwp=[0.0, 4.0, 8.0][seed % 3],
                                annual_kwh=3000 + seed % 2500))
    # Commissioned well before any backfill so the counters exist for the whole history.
    return SimulatedMeter(profile, commissioned_at=now - 400 * 86400)


def run_agent(reader: IntervalReader, sender: OutboxSender, stop: threading.Event,
              backfill_seconds: int, pace: float) -> None:
    """Create due readings (paced while backfilling) and drain the outbox, until stopped."""
    backoff = 0.5
    while not stop.is_set():
        created = reader.poll(int(time.time()), backfill_seconds, max_intervals=max(1, int(pace)))
        if sender.drain(stop):
            backoff = 0.5
        else:
            stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)
            continue
        stop.wait(1.0 if created else 2.0)


def main(argv: Sequence[str] | None = None) -> None:
    parser = node_config.base_parser("meter-agent")
    parser.add_argument("--mode", choices=["meter", "plant"], default="meter")
    parser.add_argument("--endorser", help="HOST:PORT of the endorser")
    parser.add_argument("--committer", help="HOST:PORT of a committer (queries)")
    parser.add_argument("--driver", choices=["simulated", "modbus"], default="simulated")
    parser.add_argument("--modbus-address", default="127.0.0.1:502")
    parser.add_argument("--backfill-hours", type=int, default=0,
                        help="history a new simulated meter posts first")
    parser.add_argument("--pace", type=float, default=20.0,
                        help="readings created per second while catching up")
    args = node_config.parse(parser, argv, required=("name", "consortium_dir", "data_dir",
                                                     "endorser"))
    genesis = Genesis.load(args.consortium_dir / "genesis.json")
    identity = SigningIdentity.load(args.consortium_dir, args.name)
    tls = TlsFiles.for_node(args.consortium_dir, args.name)
    now = int(time.time())
    driver = make_driver(args, args.name, args.mode, now)
    outbox = Outbox(args.data_dir / "outbox")
    reader = IntervalReader(driver, identity, outbox, genesis.reading_interval_seconds)
    channel = secure_channel(args.endorser, tls)
    sender = OutboxSender(outbox, endorser_pb2_grpc.EndorserServiceStub(channel))

    server = NodeServer(args.name, "meter-agent", args.listen, args.metrics_listen, tls,
                        health_listen=args.health_listen)
    server.add_service(meteragent_pb2_grpc.add_MeterAgentServiceServicer_to_server,
                       MeterAgentServicer(args.name, args.mode, driver, reader, sender, outbox),
                       meteragent_pb2.DESCRIPTOR.services_by_name["MeterAgentService"].full_name)
    stop = threading.Event()
    worker = threading.Thread(target=run_agent, name="agent", daemon=True,
                              args=(reader, sender, stop, args.backfill_hours * 3600, args.pace))
    server.on_stop(stop.set)
    server.on_stop(lambda: worker.join(timeout=15))
    server.on_close(channel.close)
    server.on_close(driver.close)
    server.on_close(outbox.close)
    server.start()
    worker.start()
    server.serve_until_signal()


if __name__ == "__main__":
    main()
