"""Fixtures shared by the core's tests (and, through their conftest, the services')."""

from __future__ import annotations

from energy_world import energy_dir, energy_genesis  # noqa: F401 - fixtures, registered here
from sigcache_helpers import verifications  # noqa: F401 - a fixture, registered here
