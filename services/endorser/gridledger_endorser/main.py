"""gridledger-endorser: a ledger (its replica, or its organisation's committer's) plus admission,
endorsement and forwarding."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import lmdb

from gridledger.endorser.v1 import endorser_pb2, endorser_pb2_grpc
from gridledger_core import node_config
from gridledger_core.gc_pauses import freeze_startup_heap
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.block_proof import block_verifier
from gridledger_core.ledger.follower import BlockFollower
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.ledger.orderer_probe import OrdererProbe
from gridledger_core.ledger.store_follower import StoreFollower
from gridledger_core.rpc import event_loops
from gridledger_core.rpc.aio_server import AioNodeServer
from gridledger_core.rpc.health_board import HealthBoard
from gridledger_core.rpc.peer_identity import ledger_lookup
from gridledger_core.rpc.relay import RELAY_MESSAGE_BYTES
from gridledger_core.rpc.server import NodeServer
from gridledger_core.rpc.submit_batches import SUBMIT_BATCH_BYTES
from gridledger_core.rpc.tls import FRAMING_BYTES, TlsFiles, receive_limit
from gridledger_core.signing_identity import SigningIdentity
from gridledger_core.storage import LmdbStore
from gridledger_core.storage.metrics import export_store_size
from gridledger_endorser import ack_journal, admission, options
from gridledger_endorser.ack_journal import AckJournal
from gridledger_endorser.ack_watch import DEFAULT_GIVE_UP_AFTER, DEFAULT_LOST_AFTER, AckWatch
from gridledger_endorser.aio_service import AsyncEndorserServicer
from gridledger_endorser.book_cache import BookCache
from gridledger_endorser.broadcaster import (
    DEFAULT_LATE_AFTER,
    DEFAULT_LINGER,
    DEFAULT_OVERLAP_AFTER,
    LINGER_TXS,
    Broadcaster,
)
from gridledger_endorser.cpu_slots import DEFAULT_CPU_SLOTS, CpuSlots
from gridledger_endorser.fronts import Fronts
from gridledger_endorser.options import DEFAULT_OPTION_TTL
from gridledger_endorser.service import EndorserServicer

log = logging.getLogger("gridledger_endorser")

MAX_FRONTS = 16


def _writable_dir(path: Path, made_by_committer: bool) -> None:
    """Wait until this process may write in `path` (its --data-dir), at most a minute. Beside
    its committer (`made_by_committer`: --committer-ledger) the committer makes it: in a pod
    it is a directory of the committer's volume (--group-readers), the pod's containers
    start in any order, and one this process made first would be its own, which the
    committer could not make writable by the group. Otherwise it is made here."""
    for waited in range(121):
        try:
            if not made_by_committer:
                path.mkdir(parents=True, exist_ok=True)
            if path.is_dir() and os.access(path, os.W_OK | os.X_OK):
                return
        except PermissionError:
            pass
        if waited % 20 == 0:
            log.info("waiting for the data directory %s to be writable by this process", path)
        time.sleep(0.5)
    raise SystemExit(f"{path} (--data-dir) is not writable by this process: in its "
                     "committer's pod, the committer must run with --group-readers")


def _committer_store(path: Path) -> LmdbStore:
    """The committer's ledger, read-only with the committer's map size, once the committer
    has created it (a pod's containers start in any order). LMDB needs its lock file
    writable by every process that reads: without it readers are not registered and the
    writer may reuse pages they still read, so the endorser refuses to start."""
    waited = failed = unwritable = 0
    while True:
        if (path / "data.mdb").exists() and (path / "lock.mdb").exists():
            if not os.access(path / "lock.mdb", os.W_OK):
                # A committer with --group-readers makes it group-writable just after
                # creating it: a minute, then it is not the pod's committer or volume.
                unwritable += 1
                if unwritable > 120:
                    raise SystemExit(
                        f"{path / 'lock.mdb'} is not writable by this process: the endorser "
                        "must share the committer's volume read-write, as the committer's "
                        "user or as another user of its group with the committer run with "
                        "--group-readers")
                time.sleep(0.5)
                continue
            try:
                return LmdbStore(path, map_size=0, readonly=True)
            except lmdb.Error as exc:  # created, its header not written yet
                failed += 1
                if failed > 120:  # a minute: not a ledger being created
                    raise SystemExit(f"the committer's ledger at {path} cannot be opened: "
                                     f"{exc}") from exc
                if failed % 20 == 1:
                    log.info("the committer's ledger at %s cannot be opened yet: %s", path, exc)
        elif waited % 20 == 0:
            log.info("waiting for the committer's ledger at %s", path)
        time.sleep(0.5)
        waited += 1


def _replaced(store: LmdbStore) -> Callable[[], str]:
    """Why the committer's ledger files can no longer be trusted: replaced under this reader
    (a new lock file splits LMDB's reader table; a new data file is another ledger)."""
    def why() -> str:
        if store.replaced():
            return (f"the committer's ledger at {store.path} was replaced under this endorser; "
                    "restart it")
        return ""
    return why


def _front_command(args: argparse.Namespace, relay_socket: Path, receive_bytes: int,
                   calls_per_member: int) -> Callable[[int], list[str]]:
    """`calls_per_member`: the share the endorser's own server holds members to (its
    `--calls-per-member`, or what it makes of 0)."""
    def command(_index: int) -> list[str]:
        return [sys.executable, "-m", "gridledger_endorser.front", "--name", args.name,
                "--consortium-dir", str(args.consortium_dir), "--listen", args.listen,
                "--relay-socket", str(relay_socket), "--receive-bytes", str(receive_bytes),
                "--event-loop", args.event_loop, "--log-level", args.log_level,
                "--calls-per-member", str(calls_per_member),
                "--endorser-pid", str(os.getpid())]
    return command


def main(argv: Sequence[str] | None = None) -> None:
    parser = node_config.base_parser("endorser")
    parser.add_argument("--orderer", action="append", default=[],
                        help="NAME=HOST:PORT of an orderer (repeatable)")
    parser.add_argument("--option-ttl", type=int, default=DEFAULT_OPTION_TTL,
                        help="seconds a trade option stays acceptable")
    options.add_flags(parser)
    admission.add_flags(parser)
    parser.add_argument("--grpc-server", choices=("asyncio", "threads"), default="asyncio",
                        help="asyncio: every call's work on one event loop, waits as futures "
                             "(core rpc/aio_server.py); threads: gRPC's thread-pool server, "
                             "a handler thread per call in progress")
    parser.add_argument("--event-loop", choices=event_loops.CHOICES, default=event_loops.DEFAULT,
                        help="the asyncio server's event loop: uvloop (libuv's, in C: less of "
                             "the loop's CPU per call) or Python's own (the fallback)")
    # Threads server: a submit holds its thread until an orderer acknowledges (an fsync
    # away), and a refusal by admission control is cheap: enough threads that refusals come
    # from admission control (with its hint), and gRPC's own refusal (no hint) only beyond
    # the bounded queue.
    parser.add_argument("--workers", type=int, default=64,
                        help="gRPC handler threads (threads server)")
    parser.add_argument("--cpu-slots", type=int, default=DEFAULT_CPU_SLOTS,
                        help="handler threads that check, simulate or match at once (threads "
                             "server; the rest wait on a lock instead of contending for the "
                             "GIL)")
    parser.add_argument("--calls-per-member", type=int, default=128,
                        help="calls one member (organisation) may have in progress on the "
                             "asyncio server, counted from each call's start; beyond it the "
                             "call is refused at once, RESOURCE_EXHAUSTED with a retry hint "
                             "(threads server: an equal share of --workers)")
    parser.add_argument("--max-concurrent-rpcs", type=int, default=0,
                        help="calls in progress (threads server: or waiting for a handler "
                             "thread); beyond it the threads server refuses at once with "
                             "RESOURCE_EXHAUSTED (no hint), the asyncio server takes no new "
                             "call from gRPC until one ends, while they wait inside gRPC "
                             "uncounted (0: threads server twice --workers; asyncio server "
                             "none, the members' shares of --calls-per-member are its bound)")
    parser.add_argument("--gil-switch-ms", type=node_config.milliseconds(0, 1000), default=1.0,
                        help="Python's GIL switch interval: how long the event loop may wait "
                             "for the GIL while another thread (the replica committing a "
                             "block) computes; Python's default is 5 ms")
    parser.add_argument("--broadcast-overlap-ms", type=node_config.milliseconds(0, 5000, zero=True),
                        default=DEFAULT_OVERLAP_AFTER * 1000,
                        help="how long a group of transactions may wait for an orderer's "
                             "answer before the next group leaves alongside it (at another "
                             "orderer first; broadcaster.py: one group in flight makes groups "
                             "larger; 0 sends each arrival at once when a sender is free; at "
                             "most the 5 s broadcast timeout)")
    parser.add_argument("--broadcast-linger-ms", type=node_config.milliseconds(0, 1000, zero=True),
                        default=DEFAULT_LINGER * 1000,
                        help="with no group at an orderer, how long a group of fewer than "
                             f"{LINGER_TXS} transactions waits for more to join it "
                             "(broadcaster.py: fewer calls and forwards below saturation; 0 "
                             "sends at once; at most 1,000 ms)")
    parser.add_argument("--broadcast-late-ms", type=node_config.milliseconds(10, 1000, zero=True),
                        default=DEFAULT_LATE_AFTER * 1000,
                        help="10 to 1,000 ms (default 250): an orderer that answers later is "
                             "tried after the others for a cool-down (orderer_choice.py: a "
                             "hostile orderer answering just inside the 5 s timeout must not "
                             "hold every group; so at most a fifth of it)")
    parser.add_argument("--ack-lost-after-s", type=node_config.seconds(1, 600),
                        default=DEFAULT_LOST_AFTER,
                        help="an orderer's acknowledgement the ledger has not shown "
                             "committed this long after is sent again, to the other orderers "
                             "first; the orderer is struck if one with no recent strikes takes "
                             "it as new (ack_watch.py: a hostile orderer may acknowledge and "
                             "drop; default 30 s: keep it above the follower's lag bound, 10 s, "
                             "plus the orderers' clock skew; at most 600)")
    parser.add_argument("--committer-ledger", type=Path, default=None,
                        help="the LMDB ledger directory of this organisation's own committer "
                             "on the same host or pod (its --data-dir/ledger): read it instead "
                             "of keeping a replica that re-executes every block "
                             "(core ledger/store_follower.py); default: a replica in "
                             "--data-dir, following the orderers")
    parser.add_argument("--fronts", type=int, choices=range(0, MAX_FRONTS + 1), default=0,
                        metavar=f"0-{MAX_FRONTS}",
                        help="processes that take the calls on --listen and hand them to this "
                             "one over a Unix socket (front.py; needs --grpc-server asyncio): "
                             "gRPC's per-call work moves off the process that holds the "
                             "endorser's state; 0 (default): this process takes the calls")
    parser.add_argument("--relay-socket", type=Path, default=None,
                        help="the fronts' Unix socket (default: DATA_DIR/relay/calls.sock; "
                             "its directory is made private to this user)")
    args = node_config.parse(parser, argv)
    if args.fronts and args.grpc_server != "asyncio":
        parser.error("--fronts needs --grpc-server asyncio")
    relay_socket: Path | None = None  # only with fronts: the calls come through it
    if args.fronts:
        if args.relay_socket is None and args.data_dir is None:
            parser.error("--fronts needs --data-dir or --relay-socket")
        relay_socket = args.relay_socket or args.data_dir / "relay" / "calls.sock"
    # The loop gives the GIL up at every wait for I/O and must win it back from whichever
    # thread took it: at 5 ms a block's commit added up to 5 ms to each call's steps
    # (matching RPC p99 at 1,000/s, five pairs: 30-72 ms at 5 ms, 8-48 ms at 1 ms).
    sys.setswitchinterval(args.gil_switch_ms / 1000)
    genesis = Genesis.load(args.consortium_dir / "genesis.json")
    if args.committer_ledger is None:
        store = LmdbStore(args.data_dir / "ledger", map_size=node_config.lmdb_map_size(args))
        export_store_size(store, "ledger")
    else:
        store = _committer_store(args.committer_ledger)
    ledger = Ledger(store, genesis, block_verifier(genesis))
    tls = TlsFiles.for_node(args.consortium_dir, args.name)
    orderers = node_config.parse_peers(args.orderer)
    broadcaster = Broadcaster(orderers, tls, linger=args.broadcast_linger_ms / 1000,
                              overlap_after=args.broadcast_overlap_ms / 1000,
                              late_after=args.broadcast_late_ms / 1000)
    health = HealthBoard()
    # The watch of acknowledgements on disk, so a restart does not forget one a dropping
    # orderer gave (ack_journal.py); loaded back before any call is taken.
    _writable_dir(args.data_dir, made_by_committer=args.committer_ledger is not None)
    journal = AckJournal(LmdbStore(args.data_dir / "acknowledged",
                                   map_size=ack_journal.DEFAULT_MAP_SIZE),
                         on_health=health.readiness("acknowledged"))
    watch = AckWatch(args.ack_lost_after_s, max(DEFAULT_GIVE_UP_AFTER, 4 * args.ack_lost_after_s),
                     journal=journal, orderer_names=[name for name, _ in orderers])
    restored = watch.restore()
    if restored:
        log.info("watching %d acknowledged transactions again, from the journal", restored)
    broadcaster.watch_acknowledgements(ledger.has_transaction, watch)
    identity = SigningIdentity.load(args.consortium_dir, args.name)

    # The book cache is rebuilt from the ledger before the follower starts, then follows it.
    books = BookCache(ledger, identity.name)

    receive_bytes = max(SUBMIT_BATCH_BYTES, genesis.limits.max_tx_bytes)
    if args.fronts and receive_bytes + FRAMING_BYTES >= RELAY_MESSAGE_BYTES:
        # A relayed call is a request plus its caller's certificate: it must fit the relay.
        parser.error(f"the genesis max_tx_bytes ({genesis.limits.max_tx_bytes}) is too large "
                     "for the fronts' relay")
    books.on_health = health.reporter("books")
    # With fronts, the public port is served while one of them has its relay open.
    relayed = health.reporter("fronts") if args.fronts else None
    if relayed is not None:
        relayed(False)  # until a front has opened its relay
    # Callers may be meters and plants registered on this node's ledger, not only genesis's.
    common = {"genesis": genesis, "health_listen": args.health_listen,
              "account_lookup": ledger_lookup(ledger.get_state),
              # 0: the server's own default (threads: twice the handler threads; asyncio:
              # none beyond the members' shares)
              "maximum_concurrent_rpcs": args.max_concurrent_rpcs or None,
              # the largest message an endorser is sent: a full batch, or one transaction
              "options": [receive_limit(receive_bytes)]}
    server: NodeServer | AioNodeServer
    if args.grpc_server == "asyncio":
        server = AioNodeServer(args.name, "endorser", args.listen, args.metrics_listen, tls,
                               calls_per_member=args.calls_per_member,
                               event_loop=args.event_loop,
                               relay_socket=relay_socket,
                               on_relay_streams=(lambda n: relayed(n > 0)) if relayed else None,
                               **common)
    else:
        server = NodeServer(args.name, "endorser", args.listen, args.metrics_listen, tls,
                            max_workers=args.workers, **common)
    servicer = EndorserServicer(ledger, identity, broadcaster, books, args.option_ttl,
                                limits=options.limits_from(args),
                                admission=admission.Admission(admission.config_from(args)),
                                cpu_slots=CpuSlots(args.cpu_slots))
    served = AsyncEndorserServicer(servicer) if args.grpc_server == "asyncio" else servicer
    server.add_service(endorser_pb2_grpc.add_EndorserServiceServicer_to_server, served,
                       endorser_pb2.DESCRIPTOR.services_by_name["EndorserService"].full_name)
    # A replica that cannot commit (or a ledger that cannot be read) endorses against stale
    # state: report NOT_SERVING then. The book cache and admission control (which counts
    # this endorser's commits) follow it.
    ledger_health = health.reporter("ledger")
    follower: BlockFollower | StoreFollower
    if args.committer_ledger is None:
        follower = BlockFollower(ledger, orderers, tls, on_commit=servicer.on_commit,
                                 on_health=lambda ok, _why: ledger_health(ok))
    else:
        probe = OrdererProbe(ledger, orderers, tls, block_verifier(genesis))
        follower = StoreFollower(ledger, on_commit=servicer.on_commit,
                                 on_health=lambda ok, _why: ledger_health(ok),
                                 probe=probe.verdicts,
                                 broken=_replaced(store))
        server.on_close(probe.close)
    fronts = None
    if relay_socket is not None:
        assert isinstance(server, AioNodeServer)  # --fronts needs it (checked above)
        fronts = Fronts(_front_command(args, relay_socket, receive_bytes, server.shares.share),
                        args.fronts)
        server.on_stop(fronts.stop)
    server.on_stop(follower.stop)
    server.on_close(broadcaster.close)
    server.on_close(journal.close)
    server.on_close(store.close)
    server.start()
    health.attach(server.set_health)
    if fronts is not None:
        fronts.start()
    follower.start()
    freeze_startup_heap()  # started: what lives now lives as long as the process
    server.serve_until_signal()


if __name__ == "__main__":
    main()
