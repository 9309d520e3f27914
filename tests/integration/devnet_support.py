"""Helpers for the devnet integration tests (the fixture itself is in conftest.py)."""

from __future__ import annotations

import contextlib
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from gridctl import devnet
from gridledger.committer.v1 import committer_pb2, committer_pb2_grpc
from gridledger_core.rpc.tls import secure_channel

LEDGER_ROLES = ("orderer", "committer", "endorser")


@contextlib.contextmanager
def ledger_network(directory: Path, roles: tuple[str, ...] = LEDGER_ROLES,
                   profile: str = "load",
                   adjust: Callable[[devnet.Network], None] | None = None
                   ) -> Iterator[devnet.Network]:
    """A devnet without demo traffic, of the ledger roles (orderers, committers, the endorser)
    unless `roles` says more, started through the launcher users run; stopped (logs shown on
    failure). Genesis `profile` "load" (the default) accepts the load generator's pre-signed
    past readings. `adjust` may change the planned nodes' flags before they start."""
    consortium = directory / "consortium"
    devnet.ensure_consortium(consortium, profile=profile)
    network = devnet.plan(directory, consortium, demo=False)
    if adjust is not None:
        adjust(network)
    devnet.start(network, roles=roles)
    try:
        yield network
    finally:
        devnet.stop(network)
        dump_logs_on_failure(network)


@contextlib.contextmanager
def demo_network(directory: Path, profile: str = "fast") -> Iterator[devnet.Network]:
    """The network `make run` starts (`gridctl demo`): a consortium of genesis `profile`, the
    demo traffic planned for its market (devnet.demo_settings), every role, through the same
    launcher; stopped (logs shown on failure)."""
    consortium = directory / "consortium"
    genesis = devnet.ensure_consortium(consortium, profile=profile)
    network = devnet.plan(directory, consortium, demo=True, **devnet.demo_settings(genesis))
    devnet.start(network)
    try:
        yield network
    finally:
        devnet.stop(network)
        dump_logs_on_failure(network)


def dump_logs_on_failure(net: devnet.Network) -> None:
    for node in net.nodes:
        log = Path(node.log)
        if log.exists() and b"Traceback" in log.read_bytes():
            print(f"---- {node.name} log ----\n{log.read_text()[-4000:]}")


def committer_stub(net: devnet.Network, name: str) -> committer_pb2_grpc.CommitterServiceStub:
    return committer_pb2_grpc.CommitterServiceStub(secure_channel(net.node(name).grpc, net.tls()))


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (grpc.RpcError, OSError):  # not up yet: gRPC or HTTP (metrics, Prometheus)
            pass
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def height(stub: committer_pb2_grpc.CommitterServiceStub) -> int:
    return stub.GetChainInfo(committer_pb2.GetChainInfoRequest(), timeout=5).height


def metric(node: devnet.Node, name: str) -> float | None:
    """One sample of a metric without labels, scraped from the node's /metrics."""
    text = urllib.request.urlopen(f"http://{node.metrics}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def current_primary(net: devnet.Network) -> devnet.Node:
    """The orderer that reports being the lottery primary now (by its metric)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for node in net.by_role("orderer"):
            if devnet.pid_alive(node.pid) and metric(node, "gridledger_orderer_is_primary") == 1:
                return node
        time.sleep(0.2)
    raise AssertionError("no orderer reports being primary")


def same_chain(net: devnet.Network) -> int:
    """Assert both committers hold identical blocks and state roots up to their common
    height; returns that height."""
    c1, c2 = committer_stub(net, "committer-1"), committer_stub(net, "committer-2")
    common = min(height(c1), height(c2))
    for number in range(common):
        b1 = c1.GetBlock(committer_pb2.GetBlockRequest(number=number), timeout=5)
        b2 = c2.GetBlock(committer_pb2.GetBlockRequest(number=number), timeout=5)
        assert b1.block.header == b2.block.header, f"block {number} differs"
        assert b1.state_root == b2.state_root, f"state after block {number} differs"
        assert list(b1.validation_codes) == list(b2.validation_codes), \
            f"validation codes of block {number} differ"
    return common
