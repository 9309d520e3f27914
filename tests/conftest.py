"""Fixtures shared by every test: a consortium made once per session with the real CLI code."""

from __future__ import annotations

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
