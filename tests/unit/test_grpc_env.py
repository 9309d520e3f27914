"""The gRPC settings every process is started with (gridledger_core/rpc/grpc_env.py): one
value, given by the devnet launcher and the container image alike."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gridctl import devnet
from gridledger_core.rpc import grpc_env

ROOT = Path(__file__).resolve().parents[2]


def test_the_settings_are_added_and_an_operators_own_value_wins() -> None:
    assert grpc_env.environment({"PATH": "/bin"}) == {"PATH": "/bin", **grpc_env.SETTINGS}
    own = {"GRPC_EXPERIMENTS": "event_engine_client"}
    assert grpc_env.environment(own)["GRPC_EXPERIMENTS"] == "event_engine_client"


def test_the_container_image_sets_the_same_values() -> None:
    lines = [line.split(None, 1)[1] for line in (ROOT / "Dockerfile").read_text().splitlines()
             if line.startswith("ENV ")]
    for name, value in grpc_env.SETTINGS.items():
        assert f"{name}={value}" in lines


def test_the_devnet_launcher_starts_nodes_with_the_settings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[dict[str, str]] = []

    class Started:
        pid = 4242

        def __init__(self, args: list[str], **options: object) -> None:
            started.append(options["env"])  # type: ignore[arg-type]

    monkeypatch.setattr(subprocess, "Popen", Started)
    monkeypatch.delenv("GRPC_EXPERIMENTS", raising=False)
    node = devnet.Node(name="orderer-1", role="orderer", grpc="127.0.0.1:1",
                       metrics="127.0.0.1:2", data_dir=str(tmp_path / "data"),
                       log=str(tmp_path / "orderer-1.log"))
    devnet._spawn(node)
    assert node.pid == 4242
    assert started and all(started[0][k] == v for k, v in grpc_env.SETTINGS.items())
