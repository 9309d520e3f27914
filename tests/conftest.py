"""Fixtures shared by every test: a consortium made once per session with the real CLI code,
and Prometheus' tools (Debian's `prometheus` package, installed when missing)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from gridledger_core.consortium import NodeSpec, Topology, create_consortium, default_topology
from gridledger_core.genesis import Genesis
from gridledger_core.identity import Role

# Every test meter and plant starts with this much money (µ), so buys are funded (issue 14).
TEST_ALLOCATION = 10**12


def with_money_roles(topology: Topology) -> Topology:
    """The topology with a treasury and a settlement account in the initiating organisation
    (added only if it has none, so it composes with topologies that already have them)."""
    ops = next(o for o in topology.orgs if o.name == topology.initiating_organization)
    for name, role in (("treasury", Role.TREASURY), ("settlement", Role.SETTLEMENT)):
        if not topology.names(role):
            ops.nodes.append(NodeSpec(name, role))
    return topology


def funded_settlement(topology: Topology) -> dict:
    """A settlement section: meters and plants funded, the settlement account balancing."""
    funded = topology.names(Role.METER) + topology.names(Role.PLANT)
    # The same account settlement_helpers.role_account picks as the settler (first by name).
    balancing = sorted(topology.names(Role.SETTLEMENT))[0]
    return {"balancing_account": balancing,
            "allocations": {name: TEST_ALLOCATION for name in [*funded, balancing]}}


@pytest.fixture(scope="session")
def consortium_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("consortium")
    topology = with_money_roles(default_topology())
    create_consortium(directory, topology, settlement=funded_settlement(topology))
    return directory


@pytest.fixture(scope="session")
def genesis(consortium_dir: Path) -> Genesis:
    return Genesis.load(consortium_dir / "genesis.json")


def _prometheus_pids() -> set[int]:
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.readlink(proc / "exe").endswith("/prometheus"):
                    pids.add(int(proc.name))
            except OSError:
                continue
    return pids


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool from PATH, or from Debian's `prometheus` package installed here and now.

    Skips only when it is missing and cannot be installed (not root, or no apt-get). A
    Prometheus server that the package's maintainer scripts might start is stopped again."""
    found = shutil.which("promtool")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("promtool is missing and cannot be installed (needs root and apt-get)")
    before = _prometheus_pids()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                        "prometheus"], check=True, env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=600)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"installing Debian's prometheus package failed: {exc.stderr.decode()[-2000:]}")
    finally:
        for pid in _prometheus_pids() - before:  # started by the package, i.e. by us
            os.kill(pid, signal.SIGTERM)
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("the prometheus package is installed but promtool is not on PATH")
    return found
