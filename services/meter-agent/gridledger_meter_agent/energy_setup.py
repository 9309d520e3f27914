"""Building the new-energy parts of an agent from its flags (kept out of main.py so the
reading pipeline's wiring stays as it was)."""

from __future__ import annotations

import argparse
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

from gridledger.committer.v1 import committer_pb2
from gridledger.common.v1 import envelope_pb2, transaction_pb2
from gridledger.meteragent.v1 import meteragent_pb2_grpc
from gridledger_core import node_config
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.errors import Code
from gridledger_core.plants import ScoringWeights
from gridledger_core.profiles.plant import PlantProfile
from gridledger_core.rpc.tls import TlsFiles, secure_channel
from gridledger_core.signing_identity import SigningIdentity
from gridledger_meter_agent.buyer import Buyer, BuyerConfig
from gridledger_meter_agent.commit_watch import CommitWatcher
from gridledger_meter_agent.directory import LEDGER, PlantDirectory
from gridledger_meter_agent.ledger_client import LedgerClient
from gridledger_meter_agent.neighbours import NeighbourPoller
from gridledger_meter_agent.outbox import Outbox
from gridledger_meter_agent.plant import PlantAgent, PlantConfig
from gridledger_meter_agent.readings import IntervalReader, wait_for_history


def add_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("new-energy trading")
    g.add_argument("--neighbour", action="append", default=[],
                   help="NAME=HOST:PORT of a neighbouring meter-agent (repeatable)")
    g.add_argument("--contract-wh", type=int, default=0,
                   help="meter: Wh to buy per supply contract (0: do not buy on its own)")
    g.add_argument("--price-weight", type=int, default=1)
    g.add_argument("--reliability-weight", type=int, default=1)
    g.add_argument("--no-coins", action="store_true",
                   help="meter: do not pay contracts with carbon coins")
    g.add_argument("--price", type=int, default=0,
                   help="plant: price in micro-units per kWh (0: derived from the name)")
    g.add_argument("--threshold-w", type=int, default=50_000,
                   help="plant: supply below this power is a shortfall")
    g.add_argument("--pv-panels", default="", help="plant: comma-separated PV panel ids")
    g.add_argument("--coin-value", type=int, default=100,
                   help="plant: micro-units one carbon coin pays (0: coins not accepted)")
    g.add_argument("--announce-seconds", type=float, default=60.0)
    g.add_argument("--offer-wh", type=int, default=0,
                   help="plant: energy offered (0: forecast of the next 24 h)")
    g.add_argument("--advertise", default="",
                   help="plant: HOST:PORT meters reach this agent at (default: --listen)")
    g.add_argument("--contract-seconds", type=int, default=86_400,
                   help="plant: delivery period of the contracts it signs (deliver_by = "
                        "signing time + this, at most genesis settlement.max_contract_seconds)")


def history_gate(reader: IntervalReader | None, outbox: Outbox | None,
                 stop: threading.Event) -> threading.Event:
    """An event set once the agent's onboarding history is committed (or at shutdown): the
    ledger refuses history after the meter's first order or contract, so trading waits."""
    done = threading.Event()
    if reader is None or outbox is None:
        done.set()
        return done

    def run() -> None:
        wait_for_history(reader, outbox, stop)
        done.set()
    threading.Thread(target=run, name="history-gate", daemon=True).start()
    return done


def default_price(name: str) -> int:
    """A plant's devnet price: 80 000 to 139 000 µ/kWh in steps of 1 000, from its name."""
    return 80_000 + zlib.crc32(name.encode()) % 60 * 1_000


def plant_agent(args: argparse.Namespace, identity: SigningIdentity, ledger: LedgerClient,
                profile: PlantProfile | None, endpoint: str) -> PlantAgent:
    panels = tuple(p for p in args.pv_panels.split(",") if p) or tuple(
        f"{identity.name}-pv-{i}" for i in (1, 2, 3))
    genesis = Genesis.load(args.consortium_dir / "genesis.json")
    return PlantAgent(identity, ledger, PlantConfig(
        price_micro_per_kwh=args.price or default_price(identity.name),
        threshold_w=args.threshold_w, pv_panel_ids=panels, coin_value_micro=args.coin_value,
        endpoint=args.advertise or endpoint, announce_seconds=args.announce_seconds,
        offer_wh=args.offer_wh,
        contract_seconds=min(args.contract_seconds, genesis.settlement.max_contract_seconds),
        close_after_s=genesis.reading_submission_window_seconds), profile)


def announcement_learner(directory: PlantDirectory
                         ) -> Callable[[committer_pb2.GetBlockResponse], None]:
    """Feeds the directory with the plants of valid announcements in each committed block."""
    def on_block(response: committer_pb2.GetBlockResponse) -> None:
        for raw, code in zip(response.block.transactions, response.validation_codes,
                             strict=True):
            if code != Code.TX_VALIDATION_CODE_VALID:
                continue
            endorsed = envelope_pb2.EndorsedTransaction.FromString(raw)
            tx = transaction_pb2.Transaction.FromString(endorsed.envelope.payload)
            if tx.WhichOneof("body") == "plant_announcement":
                directory.learn(tx.plant_announcement.plant, LEDGER)
    return on_block


def meter_parts(args: argparse.Namespace, identity: SigningIdentity, genesis: Genesis,
                ledger: LedgerClient, tls: TlsFiles, data_dir: Path, stop: threading.Event,
                ) -> tuple[PlantDirectory, Buyer, list[threading.Thread], list[Callable[[], None]]]:
    """The directory, its feeds (commits, neighbours) and the buyer, with their threads and
    what to close at shutdown."""
    directory = PlantDirectory(ledger, genesis.reading_submission_window_seconds)
    watcher = CommitWatcher(ledger.committer, announcement_learner(directory), stop)
    neighbours = node_config.parse_peers(args.neighbour, "--neighbour")
    channels = {name: secure_channel(address, tls) for name, address in neighbours}
    poller = (NeighbourPoller(directory, {n: meteragent_pb2_grpc.MeterAgentServiceStub(c)
                                          for n, c in channels.items()}, stop)
              if channels else None)
    buyer = Buyer(identity, genesis, ledger, directory, poller,
                  BuyerConfig(args.contract_wh,
                              ScoringWeights(args.price_weight, args.reliability_weight),
                              use_coins=not args.no_coins),
                  tls, data_dir / "certificates")
    threads = [threading.Thread(target=watcher.run, name="commits", daemon=True),
               threading.Thread(target=buyer.run, args=(stop, watcher.changed), name="buyer",
                                daemon=True)]
    if poller is not None:
        threads.append(threading.Thread(target=poller.run, name="neighbours", daemon=True))
    return directory, buyer, threads, [c.close for c in channels.values()]
