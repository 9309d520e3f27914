"""gridledger-meter-agent: a smart meter, a plant's meter (--mode plant), or one of the initiating
organisation's agents: the carbon coin issuer (--mode issuer) or the settlement agent
(--mode settlement, settler.py) on the chain.

Meters and plants read the device at every ledger interval, sign each reading, keep it in a
local LMDB outbox and send it to the endorser. With --committer a reading leaves the outbox
only once that committer shows it committed VALID (resent after --resubmit-after seconds
until then); without one, on the endorser's OK (see sender.py for what that risks). With
--backfill-hours a new simulated meter
first posts that much history (paced by --pace readings per second), which the forecaster
needs. With --committer they also trade new energy (seed 002): plants announce and sign
contract terms; meters keep a plant directory, rank plants, sign contracts, end them and
collect carbon coins and certificates (see plant.py, buyer.py, issuer.py).
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
import zlib
from collections.abc import Callable, Sequence

from gridledger.committer.v1 import committer_pb2, committer_pb2_grpc
from gridledger.endorser.v1 import endorser_pb2_grpc
from gridledger.meteragent.v1 import meteragent_pb2, meteragent_pb2_grpc
from gridledger_core import node_config
from gridledger_core.gc_pauses import freeze_startup_heap
from gridledger_core.genesis import Genesis
from gridledger_core.profiles.household import HouseholdProfile
from gridledger_core.profiles.plant import PlantProfile
from gridledger_core.rpc.health_board import HealthBoard
from gridledger_core.rpc.peer_identity import AccountLookup, RemoteAccounts
from gridledger_core.rpc.server import DEFAULT_CALLS_PER_MEMBER, NodeServer, split_host_port
from gridledger_core.rpc.tls import QUERY_RECEIVE_BYTES, TlsFiles, receive_limit, secure_channel
from gridledger_core.signing_identity import SigningIdentity
from gridledger_meter_agent import energy_setup, presale
from gridledger_meter_agent.commit_watch import CommitConfirmer, CommitWatcher
from gridledger_meter_agent.drivers import MeterDriver, ModbusTcpMeter, SimulatedMeter
from gridledger_meter_agent.issuer import Issuer
from gridledger_meter_agent.ledger_client import LedgerClient
from gridledger_meter_agent.outbox import DEFAULT_CAPACITY, Outbox
from gridledger_meter_agent.placements import PlacementJournal
from gridledger_meter_agent.readings import IntervalReader, history_threshold
from gridledger_meter_agent.sender import DEFAULT_RESUBMIT_AFTER, OutboxSender
from gridledger_meter_agent.service import AgentParts, MeterAgentServicer
from gridledger_meter_agent.settler import Settler

log = logging.getLogger(__name__)


def make_profile(args: argparse.Namespace, name: str,
                 mode: str) -> HouseholdProfile | PlantProfile:
    seed = zlib.crc32(name.encode())
    if mode == "plant":
        return PlantProfile(seed=seed, wind_kw=args.wind_kw,
                            outage_probability_per_day=args.outage_probability)
    pv_kwp = args.pv_kwp if args.pv_kwp >= 0 else [0.0, 4.0, 8.0][seed % 3]
    return HouseholdProfile(seed=seed, pv_kwp=pv_kwp, annual_kwh=3000 + seed % 2500,
                            wind_kw=args.wind_kw, base_load_w=args.base_load_w)


def make_driver(args: argparse.Namespace, profile: HouseholdProfile | PlantProfile,
                now: int) -> MeterDriver:
    if args.driver == "modbus":
        host, port = split_host_port(args.modbus_address)
        return ModbusTcpMeter(host, port)
    # Commissioned well before any backfill so the counters exist for the whole history.
    return SimulatedMeter(profile, commissioned_at=now - 400 * 86400)


def run_agent(reader: IntervalReader, sender: OutboxSender, stop: threading.Event,
              backfill_seconds: int, pace: float,
              on_health: Callable[[bool], None] = lambda serving: None,
              max_idle: float = 10.0) -> None:
    """Create due readings (paced while backfilling) and drain the outbox, until stopped.
    While idle it looks again after at most `max_idle` seconds (a quarter of the reading
    interval, so a reading leaves well inside a short submission window).

    The loop never ends on an error: an unexpected one (storage, a driver, a bug) is logged,
    turns health NOT_SERVING (readings are not being taken) and is retried with backoff;
    the next clean pass turns it SERVING again."""
    backoff = 0.5
    healthy = True
    while not stop.is_set():
        try:
            created = reader.poll(int(time.time()), backfill_seconds,
                                  max_intervals=max(1, int(pace)))
            drained = sender.drain(stop)
        except Exception:
            log.exception("reading loop failed; node reports NOT_SERVING and retries")
            if healthy:
                healthy = False
                on_health(False)
            stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)
            continue
        if not healthy:
            healthy = True
            on_health(True)
        if drained:
            backoff = 0.5
        else:
            stop.wait(min(backoff, max_idle))
            backoff = min(backoff * 2, 10.0)
            continue
        # Readings awaiting their commit are looked for again soon (one GetChainInfo while
        # the chain does not grow).
        stop.wait(0.5 if sender.awaiting else 1.0 if created else 2.0)


def _state_at(committer: committer_pb2_grpc.CommitterServiceStub, key: str) -> bytes | None:
    response = committer.GetState(committer_pb2.GetStateRequest(key=key), timeout=3)
    return response.value if response.found else None


def main(argv: Sequence[str] | None = None) -> None:
    parser = node_config.base_parser("meter-agent")
    parser.add_argument("--calls-per-member", type=int, default=DEFAULT_CALLS_PER_MEMBER,
                        help="calls one member (organisation) may have in progress here "
                             "(neighbours' plant directories, rankings), each on a handler "
                             "thread from its start")
    parser.add_argument("--mode", choices=["meter", "plant", "issuer", "settlement"],
                        default="meter")
    parser.add_argument("--endorser", help="HOST:PORT of the endorser")
    parser.add_argument("--committer", help="HOST:PORT of a committer: readings stay in the "
                                            "outbox until it shows them committed; needed "
                                            "for new-energy trading")
    parser.add_argument("--resubmit-after", type=float, default=DEFAULT_RESUBMIT_AFTER,
                        help="seconds after which a reading acknowledged by the endorser but "
                             "not seen committed is sent again (same envelope)")
    parser.add_argument("--outbox-capacity", type=int, default=DEFAULT_CAPACITY,
                        help="readings the outbox holds (sent or not) before the reader "
                             "waits")
    parser.add_argument("--driver", choices=["simulated", "modbus"], default="simulated")
    parser.add_argument("--modbus-address", default="127.0.0.1:502")
    parser.add_argument("--pv-kwp", type=float, default=-1.0,
                        help="simulated household PV size (default: derived from the name)")
    parser.add_argument("--wind-kw", type=float, default=0.0,
                        help="simulated meter or plant: mean power of a wind turbine that "
                             "produces at any hour (profiles/wind.py)")
    parser.add_argument("--base-load-w", type=float, default=0.0,
                        help="simulated household: constant extra load (heat pump, EV)")
    parser.add_argument("--outage-probability", type=node_config.probability(),
                        default=PlantProfile.outage_probability_per_day,
                        help="simulated plant: chance per local day of one forced outage in "
                             "its supply hours, in which it produces nothing "
                             "(profiles/plant.py)")
    parser.add_argument("--backfill-hours", type=int, default=0,
                        help="history a new simulated meter posts first")
    parser.add_argument("--pace", type=float, default=20.0,
                        help="readings created per second while catching up")
    energy_setup.add_flags(parser)
    presale.add_flags(parser)
    args = node_config.parse(parser, argv, required=("name", "consortium_dir", "data_dir",
                                                     "endorser"))
    if args.mode in ("issuer", "settlement") and not args.committer:
        parser.error(f"--mode {args.mode} needs --committer")
    genesis = Genesis.load(args.consortium_dir / "genesis.json")
    identity = SigningIdentity.load(args.consortium_dir, args.name)
    tls = TlsFiles.for_node(args.consortium_dir, args.name)
    parts = AgentParts(args.name, args.mode)
    stop = threading.Event()
    # Each working thread reports on its own; the board publishes to the server once it
    # exists (attached below, before any thread starts).
    health = HealthBoard()
    threads: list[threading.Thread] = []
    closers = []
    channel = secure_channel(args.endorser, tls)
    closers.append(channel.close)
    endorser = endorser_pb2_grpc.EndorserServiceStub(channel)
    committer = None
    if args.committer:
        committer_channel = secure_channel(args.committer, tls)
        closers.append(committer_channel.close)
        committer = committer_pb2_grpc.CommitterServiceStub(committer_channel)

    profile = None
    if args.mode in ("meter", "plant"):  # the reading pipeline, as it always was
        profile = make_profile(args, args.name, args.mode)
        parts.driver = make_driver(args, profile, int(time.time()))
        parts.outbox = Outbox(args.data_dir / "outbox", capacity=args.outbox_capacity,
                              map_size=node_config.lmdb_map_size(args))
        # Backfill too old to be a live reading goes as onboarding history.
        parts.reader = IntervalReader(parts.driver, identity, parts.outbox,
                                      genesis.reading_interval_seconds,
                                      history_before_s=history_threshold(
                                          genesis.reading_submission_window_seconds))
        if committer is None:
            log.warning("no --committer: a reading leaves the outbox on the endorser's OK, "
                        "without seeing its commit (a reading the ordering service loses "
                        "is not sent again)")
        parts.sender = OutboxSender(
            parts.outbox, endorser,
            CommitConfirmer(committer) if committer is not None else None,
            resubmit_after=args.resubmit_after)
        threads.append(threading.Thread(
            target=run_agent, name="agent", daemon=True,
            args=(parts.reader, parts.sender, stop, args.backfill_hours * 3600, args.pace,
                  health.reporter("readings"),
                  max(1.0, min(10.0, genesis.reading_interval_seconds / 4)))))
        closers += [parts.driver.close, parts.outbox.close]

    ledger = None
    # No ledger here: callers that are ledger-registered meters and plants are looked up at
    # the committer (misses remembered briefly); without one, genesis accounts only.
    account_lookup: AccountLookup | None = None
    if committer is not None:
        ledger = LedgerClient(endorser, committer)
        account_lookup = RemoteAccounts(lambda key: _state_at(committer, key))
        if args.mode == "meter":
            parts.directory, parts.buyer, meter_threads, meter_closers = energy_setup.meter_parts(
                args, identity, genesis, ledger, tls, args.data_dir, stop)
            threads += meter_threads
            closers += meter_closers
            # Trading closes onboarding: no contract and no order before the history is in.
            history_in = energy_setup.history_gate(parts.reader, parts.outbox, stop)
            parts.buyer.ready = history_in.is_set
            policy = presale.policy_from(args)
            if policy.share_percent:
                journal = PlacementJournal(args.data_dir / "presale")
                closers.append(journal.close)
                trader = presale.PresaleTrader(identity, genesis, ledger, policy,
                                               journal=journal)
                on_health = health.reporter("presale")
                threads.append(threading.Thread(
                    target=lambda: history_in.wait() and trader.run(stop, on_health),
                    name="presale", daemon=True))
        elif args.mode == "issuer":
            parts.issuer = Issuer(identity, genesis, ledger)
            watcher = CommitWatcher(ledger.committer, lambda _block: None, stop)
            threads += [threading.Thread(target=watcher.run, name="commits", daemon=True),
                        threading.Thread(target=parts.issuer.run,
                                         args=(stop, watcher.changed,
                                               health.reporter("issuer"),
                                               health.readiness("issuer.ledger")),
                                         name="issuer", daemon=True)]
        elif args.mode == "settlement":
            parts.settler = Settler(identity, genesis, ledger)
            watcher = CommitWatcher(ledger.committer, lambda _block: None, stop)
            threads += [threading.Thread(target=watcher.run, name="commits", daemon=True),
                        threading.Thread(target=parts.settler.run,
                                         args=(stop, watcher.changed,
                                               health.reporter("settlement"),
                                               health.readiness("settlement.ledger")),
                                         name="settler", daemon=True)]

    server = NodeServer(args.name, "meter-agent", args.listen, args.metrics_listen, tls,
                        genesis=genesis, health_listen=args.health_listen,
                        account_lookup=account_lookup,
                        calls_per_member=args.calls_per_member,
                        options=[receive_limit(QUERY_RECEIVE_BYTES)])
    health.attach(server.set_health)
    server.add_service(meteragent_pb2_grpc.add_MeterAgentServiceServicer_to_server,
                       MeterAgentServicer(parts),
                       meteragent_pb2.DESCRIPTOR.services_by_name["MeterAgentService"].full_name)
    server.on_stop(stop.set)
    server.on_stop(lambda: [t.join(timeout=15) for t in threads])
    for close in reversed(closers):
        server.on_close(close)
    server.start()
    if args.mode == "plant" and ledger is not None:
        host, _ = split_host_port(args.listen)
        plant_profile = profile if args.driver == "simulated" else None
        assert plant_profile is None or isinstance(plant_profile, PlantProfile)
        parts.plant = energy_setup.plant_agent(args, identity, ledger, plant_profile,
                                               f"{host}:{server.port}")
        threads.append(threading.Thread(target=parts.plant.run,
                                        args=(stop, health.reporter("announce"),
                                              health.readiness("announce.ledger")),
                                        name="announce", daemon=True))
    for thread in threads:
        thread.start()
    freeze_startup_heap()  # started: what lives now lives as long as the process
    server.serve_until_signal()


if __name__ == "__main__":
    main()
