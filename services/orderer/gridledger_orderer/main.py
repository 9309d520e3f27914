"""gridledger-orderer: one member of the ordering cluster."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

from gridledger.orderer.v1 import consensus_pb2, consensus_pb2_grpc, orderer_pb2, orderer_pb2_grpc
from gridledger_core import node_config
from gridledger_core.consensus.protocol import DEFAULT_MAX_BATCH_WAIT
from gridledger_core.gc_pauses import freeze_startup_heap
from gridledger_core.genesis import Genesis
from gridledger_core.rpc.height_notifier import HeightNotifier
from gridledger_core.rpc.server import NodeServer
from gridledger_core.rpc.tls import TlsFiles
from gridledger_core.signing_identity import SigningIdentity
from gridledger_core.storage import LmdbStore
from gridledger_core.storage.metrics import export_store_size
from gridledger_orderer import memory
from gridledger_orderer.limits import OrdererLimits
from gridledger_orderer.node import OrdererNode, OrderingParams
from gridledger_orderer.service import ConsensusServicer, OrdererServicer
from gridledger_orderer.store import OrdererStore
from gridledger_orderer.transport import Transport

# Block wait and round timeout: NaN (a block cut only when full) and infinity are refused.
_SECONDS = node_config.seconds(0, 60)


def main(argv: Sequence[str] | None = None) -> None:
    memory.tune_allocator()  # before any thread starts (memory.py says why)
    parser = node_config.base_parser("orderer")
    parser.add_argument("--peer", action="append", default=[],
                        help="NAME=HOST:PORT of another orderer (repeatable)")
    parser.add_argument("--max-batch-txs", type=int, default=500)
    parser.add_argument("--max-batch-bytes", type=int, default=1 << 20)
    parser.add_argument("--max-batch-wait", type=_SECONDS, default=DEFAULT_MAX_BATCH_WAIT,
                        help="seconds the oldest pending transaction may wait for a block "
                             f"(default {DEFAULT_MAX_BATCH_WAIT:g}: fewer, larger blocks below "
                             "saturation; below --round-timeout)")
    parser.add_argument("--round-timeout", type=_SECONDS, default=1.0,
                        help="base round timeout in seconds (doubles per failed round)")
    for field in dataclasses.fields(OrdererLimits):  # the bounds (docs/operations.md)
        default = getattr(OrdererLimits(), field.name)
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(default),
                            default=default, help=f"limit (default {default})")
    args = node_config.parse(parser, argv)
    if args.max_batch_wait >= args.round_timeout:  # replicas would time out waiting for it
        parser.error(f"--max-batch-wait ({args.max_batch_wait:g} s) must be below "
                     f"--round-timeout ({args.round_timeout:g} s)")
    limits = OrdererLimits(**{f.name: getattr(args, f.name)
                              for f in dataclasses.fields(OrdererLimits)})
    genesis = Genesis.load(args.consortium_dir / "genesis.json")
    identity = SigningIdentity.load(args.consortium_dir, args.name)
    if identity.name not in genesis.orderer_keys:
        raise SystemExit(f"{identity.name} is not an orderer of the genesis configuration")
    tls = TlsFiles.for_node(args.consortium_dir, args.name)
    lmdb_store = LmdbStore(args.data_dir / "orderer", map_size=node_config.lmdb_map_size(args))
    export_store_size(lmdb_store, "orderer")
    store = OrdererStore(lmdb_store)
    # Deployments may hand every orderer the full member list; it never dials itself.
    peers = [(name, address) for name, address in node_config.parse_peers(args.peer, "--peer")
             if name != identity.name]
    transport = Transport(peers, tls, limits.outbox_peer_bytes)
    notifier = HeightNotifier(lambda: store.height)
    params = OrderingParams(args.max_batch_txs, args.max_batch_bytes, args.max_batch_wait,
                            args.round_timeout)
    node = OrdererNode(genesis, identity, store, transport, params, notifier.grew, limits)

    members = len(genesis.organizations)
    orderers_per_member = max(Counter(o.org for o in genesis.orderers).values())
    server = NodeServer(args.name, "orderer", args.listen, args.metrics_listen, tls,
                        genesis=genesis,
                        max_workers=limits.worker_threads(members, orderers_per_member),
                        calls_per_member=limits.member_calls(members, orderers_per_member),
                        health_listen=args.health_listen,
                        options=[("grpc.max_receive_message_length", limits.max_message_bytes),
                                 # streams one connection may hold open at once
                                 ("grpc.max_concurrent_streams", 64)])
    node.on_health = server.set_serving  # a consensus thread that cannot work is not SERVING
    server.add_service(orderer_pb2_grpc.add_OrdererServiceServicer_to_server,
                       OrdererServicer(node, store, notifier),
                       orderer_pb2.DESCRIPTOR.services_by_name["OrdererService"].full_name)
    server.add_service(consensus_pb2_grpc.add_ConsensusServiceServicer_to_server,
                       ConsensusServicer(node, genesis),
                       consensus_pb2.DESCRIPTOR.services_by_name["ConsensusService"].full_name)
    trimmer = memory.Trimmer()
    server.on_stop(trimmer.stop)
    server.on_stop(notifier.close)
    server.on_stop(transport.stop)  # ends our streams into the peers' Exchange calls
    server.on_stop(node.stop)
    server.on_close(store.close)
    server.start()
    transport.start()
    node.start()
    trimmer.start()
    freeze_startup_heap()  # started: what lives now lives as long as the process
    server.serve_until_signal()


if __name__ == "__main__":
    main()
