"""The committer's tests reuse the ledger and market builders of tests/unit/core."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from sigcache_helpers import verifications  # noqa: F401 - a fixture, registered here
