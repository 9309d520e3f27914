"""gridctl entry point: one CLI over the consortium, the local network and the ledger."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from gridctl import (
    commands_energy,
    commands_enrol,
    commands_headend,
    commands_identity,
    commands_ledger,
    commands_load,
    commands_market,
    commands_money,
    commands_orderer,
    commands_state,
    connect,
    devnet,
    devnet_containers,
)
from gridctl.live_summary import LiveSummary
from gridctl.output import emit, fail
from gridledger.committer.v1 import committer_pb2, committer_pb2_grpc
from gridledger.common.v1 import block_pb2
from gridledger_core.consortium import FAST, PROFILES, create_consortium, default_topology
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.errors import code_name
from gridledger_core.rpc.tls import secure_channel

DEFAULT_DIR = Path(".devnet")


# -- network ----------------------------------------------------------------------------------

def cmd_network_init(args: argparse.Namespace) -> None:
    target = args.consortium_dir or args.dir / "consortium"
    if (target / "genesis.json").exists() and not args.force:
        fail(f"a consortium already exists in {target} (use --force to replace it)")
    topology = default_topology(args.orderers, args.meters, args.plants)
    genesis = create_consortium(target, topology, profile=args.profile)
    emit({"consortium_dir": str(target), "genesis": str(genesis),
          "organizations": [o.name for o in topology.orgs],
          "nodes": len(topology.nodes())}, args.json)


# -- devnet -----------------------------------------------------------------------------------

def cmd_devnet_up(args: argparse.Namespace) -> None:
    directory: Path = args.dir
    if (directory / "network.json").exists():
        old = devnet.Network.load(directory)
        if any(devnet.pid_alive(n.pid) for n in old.nodes):
            fail(f"a devnet is already running from {directory}; `gridctl devnet down` first")
    consortium_dir = args.consortium_dir or directory / "consortium"
    genesis = devnet.ensure_consortium(consortium_dir, args.orderers, profile=args.profile)
    network = devnet.plan(directory.resolve(), consortium_dir.resolve(), demo=not args.no_demo,
                          **devnet.demo_settings(genesis))
    print(f"starting {len(network.nodes)} nodes from {directory} ...", file=sys.stderr)
    if getattr(args, "containers", False):  # containers from `make images` (issue 16)
        devnet_containers.start(network, tag=args.image_tag)
    else:
        devnet.start(network)
    print(f"devnet up: {network.network_file}", file=sys.stderr)
    if args.detach:
        emit(network.describe(), args.json) if args.json else _print_nodes(network)
        return
    _print_nodes(network)
    _watch(network)


def _print_nodes(network: devnet.Network) -> None:
    emit([{"name": n.name, "role": n.role, "grpc": n.grpc, "metrics": n.metrics, "pid": n.pid}
          for n in network.nodes], False, ["name", "role", "grpc", "metrics", "pid"])


STATUS_EVERY_S = 10.0  # the status line; events are printed as they are seen (every 2 s)


def _watch(network: devnet.Network) -> None:
    """Foreground mode: a live summary until Ctrl-C, then a clean stop of every node.

    Every STATUS_EVERY_S a status line (each committer's height and last block, transaction
    rate, the market and new-energy totals of live_summary, nodes that are down); in between,
    one indented line per new event on the ledger (trade, settled slot, contract signed,
    ended, coins and certificate issued)."""
    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    channels = {n.name: secure_channel(n.grpc, network.tls())
                for n in network.by_role("committer")}
    stubs = {k: committer_pb2_grpc.CommitterServiceStub(c) for k, c in channels.items()}
    summary = LiveSummary(Genesis.load(network.consortium_dir / "genesis.json"))
    previous: tuple[float, int] | None = None
    last_status = 0.0
    try:
        while not stopping:
            try:
                events = summary.poll(next(iter(stubs.values())))
                market = " | " + summary.line()
            except grpc.RpcError:
                events, market = [], ""
            for event in events:
                print(f"{time.strftime('%H:%M:%S')}    {event}", flush=True)
            now = time.monotonic()
            if now - last_status >= STATUS_EVERY_S:
                last_status = now
                parts = []
                total = 0
                for name, stub in stubs.items():
                    try:
                        info = stub.GetChainInfo(committer_pb2.GetChainInfoRequest(), timeout=2)
                        parts.append(f"{name} h={info.height} {info.last_block_hash.hex()[:8]}")
                        total = max(total, info.transactions)
                    except grpc.RpcError as exc:
                        parts.append(f"{name} {exc.code().name}")  # type: ignore[attr-defined]
                rate = (total - previous[1]) / (now - previous[0]) if previous else 0.0
                previous = (now, total)
                dead = [n.name for n in network.nodes if not devnet.pid_alive(n.pid)]
                print(f"{time.strftime('%H:%M:%S')}  {' | '.join(parts)} | txs={total} "
                      f"({rate:.1f}/s){market}" + (f" | DOWN: {', '.join(dead)}" if dead else ""),
                      flush=True)
            for _ in range(20):
                if stopping:
                    break
                time.sleep(0.1)
    finally:
        for channel in channels.values():
            channel.close()
        print("stopping devnet ...", file=sys.stderr)
        devnet.stop(network)
        print("devnet stopped", file=sys.stderr)


def cmd_devnet_down(args: argparse.Namespace) -> None:
    network = connect.load_network(args.dir)
    devnet.stop(network)
    emit({"stopped": len(network.nodes), "dir": str(args.dir)}, args.json)


def cmd_devnet_status(args: argparse.Namespace) -> None:
    network = connect.load_network(args.dir)
    devnet_containers.refresh(network)
    rows = [{"name": n.name, "role": n.role, "grpc": n.grpc, "metrics": n.metrics, "pid": n.pid,
             "state": "up" if devnet.pid_alive(n.pid) else "down", "data_dir": n.data_dir}
            for n in network.nodes]
    emit(rows, args.json, ["name", "role", "state", "grpc", "metrics", "pid"])
    if any(r["state"] == "down" for r in rows):
        raise SystemExit(3)


def cmd_demo(args: argparse.Namespace) -> None:
    args.detach = False
    args.no_demo = False
    args.consortium_dir = None
    args.json = False
    cmd_devnet_up(args)


# -- ledger queries ---------------------------------------------------------------------------

def cmd_chain_info(args: argparse.Namespace) -> None:
    channel, stub = connect.committer(args.dir, args.node)
    with channel:
        info = connect.call(stub.GetChainInfo, committer_pb2.GetChainInfoRequest())
    emit({"height": info.height, "last_block_hash": info.last_block_hash.hex(),
          "state_root": info.state_root.hex(), "transactions": info.transactions}, args.json)


def cmd_block_show(args: argparse.Namespace) -> None:
    channel, stub = connect.committer(args.dir, args.node)
    with channel:
        response = connect.call(stub.GetBlock, committer_pb2.GetBlockRequest(number=args.number))
    header = block_pb2.BlockHeader.FromString(response.block.header)
    qc = response.block.metadata.commit_certificate
    emit({"number": header.number, "previous_hash": header.previous_hash.hex(),
          "data_hash": header.data_hash.hex(), "proposer": header.proposer,
          "round": header.round, "timestamp": header.timestamp.ToJsonString(),
          "transactions": len(response.block.transactions),
          "valid": sum(1 for c in response.validation_codes if code_name(c) == "VALID"),
          "co_signers": ",".join(s.orderer for s in qc.signatures),
          "state_root": response.state_root.hex()}, args.json)


def cmd_tx_show(args: argparse.Namespace) -> None:
    channel, stub = connect.committer(args.dir, args.node)
    with channel:
        response = connect.call(stub.GetTransaction, committer_pb2.GetTransactionRequest(
            tx_id=args.tx_id))
    emit({"tx_id": args.tx_id, "block": response.block_number, "index": response.index,
          "validation_code": code_name(response.validation_code),
          "message": response.message}, args.json)


# -- parser -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gridctl", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help="devnet directory holding network.json (default .devnet)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    node = argparse.ArgumentParser(add_help=False)
    node.add_argument("--node", help="committer to ask (default: the first)")
    sub = parser.add_subparsers(dest="command", required=True)

    net = sub.add_parser("network", help="consortium material").add_subparsers(
        dest="action", required=True)
    init = net.add_parser("init", parents=[common], help="create CAs, certificates, genesis")
    init.add_argument("--consortium-dir", type=Path, help="default: <dir>/consortium")
    init.add_argument("--orderers", type=int, default=4)
    init.add_argument("--meters", type=int, default=3)
    init.add_argument("--plants", type=int, default=2)
    init.add_argument("--force", action="store_true")
    init.add_argument("--profile", choices=sorted(PROFILES), default=FAST.name,
                      help="genesis timing and money: fast (the demo market: 30 s readings, "
                           "1-minute slots) or standard (production figures)")
    init.set_defaults(func=cmd_network_init)

    dev = sub.add_parser("devnet", help="the local network").add_subparsers(
        dest="action", required=True)
    up = dev.add_parser("up", parents=[common], help="start every node on loopback")
    up.add_argument("--detach", action="store_true", help="return once the network is up")
    up.add_argument("--consortium-dir", type=Path)
    up.add_argument("--orderers", type=int, default=4, help="when creating a consortium")
    up.add_argument("--no-demo", action="store_true", help="meters post live readings only")
    up.add_argument("--profile", choices=sorted(PROFILES), default=FAST.name,
                    help="genesis profile when creating a consortium (see network init)")
    up.add_argument("--containers", action="store_true",
                    help="run every node as a container from the images of `make images`")
    up.add_argument("--image-tag", default="dev", help="with --containers (default dev)")
    up.set_defaults(func=cmd_devnet_up)
    dev.add_parser("down", parents=[common], help="stop a detached network").set_defaults(
        func=cmd_devnet_down)
    dev.add_parser("status", parents=[common], help="state of every node").set_defaults(
        func=cmd_devnet_status)

    demo = sub.add_parser("demo", parents=[common], help="devnet with demo traffic (make run)")
    demo.add_argument("--orderers", type=int, default=4)
    demo.add_argument("--profile", choices=sorted(PROFILES), default=FAST.name,
                      help="genesis profile when creating a consortium (default fast)")
    demo.set_defaults(func=cmd_demo)

    chain = sub.add_parser("chain", help="chain queries").add_subparsers(dest="action",
                                                                          required=True)
    chain.add_parser("info", parents=[common, node], help="height, last hash, state root") \
        .set_defaults(func=cmd_chain_info)
    block = sub.add_parser("block", help="blocks").add_subparsers(dest="action", required=True)
    show = block.add_parser("show", parents=[common, node], help="one block")
    show.add_argument("number", type=int)
    show.set_defaults(func=cmd_block_show)
    tx = sub.add_parser("tx", help="transactions").add_subparsers(dest="action", required=True)
    txshow = tx.add_parser("show", parents=[common, node], help="one transaction and its code")
    txshow.add_argument("tx_id")
    txshow.set_defaults(func=cmd_tx_show)
    commands_ledger.register(sub)
    commands_state.register(sub)
    commands_market.register(sub)
    commands_energy.register(sub)
    commands_money.register(sub)  # after energy: extends its `coins`
    commands_identity.register(sub)
    commands_enrol.register(sub)
    commands_orderer.register(sub)
    commands_load.register(sub)
    commands_headend.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
