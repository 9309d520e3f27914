"""gridledger-committer: follow the orderers, keep the LMDB ledger, serve queries."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from gridledger.committer.v1 import committer_pb2, committer_pb2_grpc
from gridledger_committer.service import CommitterServicer
from gridledger_committer.settlement_metrics import SettlementMetrics
from gridledger_core import node_config
from gridledger_core.gc_pauses import freeze_startup_heap
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.block_proof import block_verifier
from gridledger_core.ledger.follower import BlockFollower
from gridledger_core.ledger.ledger import CommitResult, Ledger
from gridledger_core.rpc.height_notifier import HeightNotifier
from gridledger_core.rpc.peer_identity import ledger_lookup
from gridledger_core.rpc.server import NodeServer
from gridledger_core.rpc.tls import QUERY_RECEIVE_BYTES, TlsFiles, receive_limit
from gridledger_core.storage import LmdbStore
from gridledger_core.storage.metrics import export_store_size

log = logging.getLogger("gridledger_committer")


def _endorser_dir(path: Path) -> None:
    """Make `path` writable by this process's group (setgid, so what the endorser makes there
    stays in it), before the ledger's lock file becomes group-writable: the endorser waits for
    the directory. One this process does not own (made by hand, or by another version) it
    leaves as it is: the endorser says so if it cannot write there; a committer that stopped
    for it would take its pod down with it."""
    path.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    wanted = mode | stat.S_IRWXG | stat.S_ISGID
    if mode != wanted:
        try:
            os.chmod(path, wanted)
        except PermissionError:
            log.warning("cannot make %s writable by this process's group (not its owner)",
                        path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = node_config.base_parser("committer")
    parser.add_argument("--orderer", action="append", default=[],
                        help="NAME=HOST:PORT of an orderer to pull blocks from (repeatable)")
    parser.add_argument("--calls-per-member", type=int, default=16,
                        help="calls one member (organisation) may have in progress, each on a "
                             "handler thread from its start; each meter agent holds a "
                             "SubscribeCommits stream or two")
    parser.add_argument("--group-readers", action="store_true",
                        help="make the ledger's LMDB lock file group-writable, and "
                             f"DATA_DIR/{node_config.POD_ENDORSER_DIR} a directory the group "
                             "may write: this "
                             "organisation's endorser reads the ledger as another user of this "
                             "process's group (the manifests' pod, where a container of the "
                             "same user could read the other's keys through /proc) and keeps "
                             "its own state there (its --data-dir)")
    args = node_config.parse(parser, argv)
    genesis = Genesis.load(args.consortium_dir / "genesis.json")
    if args.group_readers:
        _endorser_dir(args.data_dir / node_config.POD_ENDORSER_DIR)
    store = LmdbStore(args.data_dir / "ledger", map_size=node_config.lmdb_map_size(args),
                      group_readers=args.group_readers)
    ledger = Ledger(store, genesis, block_verifier(genesis))
    tls = TlsFiles.for_node(args.consortium_dir, args.name)
    notifier = HeightNotifier(lambda: ledger.height)
    export_store_size(store, "ledger")
    settlement_metrics = SettlementMetrics(ledger)
    settlement_metrics.restore()

    def on_commit(result: CommitResult) -> None:
        notifier.grew(result)
        settlement_metrics.on_commit(result)

    # Callers may be meters and plants registered on this node's ledger, not only genesis's.
    server = NodeServer(args.name, "committer", args.listen, args.metrics_listen, tls,
                        genesis=genesis, health_listen=args.health_listen,
                        account_lookup=ledger_lookup(ledger.get_state),
                        calls_per_member=args.calls_per_member,
                        options=[receive_limit(QUERY_RECEIVE_BYTES)])
    server.add_service(committer_pb2_grpc.add_CommitterServiceServicer_to_server,
                       CommitterServicer(ledger, notifier),
                       committer_pb2.DESCRIPTOR.services_by_name["CommitterService"].full_name)
    follower = BlockFollower(ledger, node_config.parse_peers(args.orderer), tls,
                             on_commit=on_commit,
                             on_health=lambda ok, _why: server.set_serving(ok))
    server.on_stop(notifier.close)
    server.on_stop(follower.stop)
    server.on_close(store.close)
    server.start()
    follower.start()
    freeze_startup_heap()  # started: what lives now lives as long as the process
    server.serve_until_signal()


if __name__ == "__main__":
    main()
