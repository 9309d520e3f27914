"""How every gridctl command reaches the network: the devnet description, a node by name or
role, an mTLS channel and stub to it, and a call that turns a gRPC error into a clear exit."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import grpc

from gridctl import devnet
from gridctl.output import fail
from gridledger.committer.v1 import committer_pb2_grpc
from gridledger.endorser.v1 import endorser_pb2_grpc
from gridledger.meteragent.v1 import meteragent_pb2_grpc
from gridledger_core.rpc.tls import secure_channel


def common_flags(node_help: str | None = "committer to ask (default: the first)"
                 ) -> argparse.ArgumentParser:
    """The parent parser every command shares: --dir, --json and (unless None) --node."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=Path, default=Path(".devnet"),
                        help="devnet directory holding network.json (default .devnet)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    if node_help is not None:
        common.add_argument("--node", help=node_help)
    return common


def load_network(directory: Path) -> devnet.Network:
    if not (directory / "network.json").exists():
        fail(f"no network at {directory}; start one with `gridctl devnet up --dir {directory}`")
    return devnet.Network.load(directory)


def node_of(network: devnet.Network, name: str | None, role: str) -> devnet.Node:
    """The node called `name`, or the network's first node of `role`."""
    if name:
        try:
            return network.node(name)
        except KeyError:
            fail(f"no node {name!r} in {network.network_file}")
    nodes = network.by_role(role)
    if not nodes:
        fail(f"the network has no {role}")
    return nodes[0]


def committer(directory: Path, name: str | None = None) -> tuple[grpc.Channel, Any]:
    network = load_network(directory)
    channel = secure_channel(node_of(network, name, "committer").grpc, network.tls())
    return channel, committer_pb2_grpc.CommitterServiceStub(channel)


def endorser(directory: Path, name: str | None = None
             ) -> tuple[devnet.Network, grpc.Channel, Any]:
    network = load_network(directory)
    channel = secure_channel(node_of(network, name, "endorser").grpc, network.tls())
    return network, channel, endorser_pb2_grpc.EndorserServiceStub(channel)


def agent(directory: Path, name: str) -> tuple[grpc.Channel, Any]:
    network = load_network(directory)
    channel = secure_channel(node_of(network, name, "meter-agent").grpc, network.tls())
    return channel, meteragent_pb2_grpc.MeterAgentServiceStub(channel)


def call(method: Any, request: Any, timeout: float = 15.0) -> Any:
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as exc:
        fail(f"{exc.code().name}: {exc.details()}", 2)  # type: ignore[attr-defined]
