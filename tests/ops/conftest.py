"""Fixtures for the operations checks: the repository root and kubectl (promtool comes from
the top-level conftest, shared with the integration tests)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from ops_support import ROOT


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl is needed to render the kustomize overlays (`kubectl kustomize`)")
    return path
