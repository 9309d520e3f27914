"""Fixtures shared by every test: a consortium made once per session with the real CLI code,
and Prometheus' tools (Debian's `prometheus` package, installed when missing)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from gridledger_core.consortium import create_consortium, default_topology
from gridledger_core.genesis import Genesis


@pytest.fixture(scope="session")
def consortium_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("consortium")
    create_consortium(directory, default_topology())
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
