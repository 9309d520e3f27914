"""The meter-agent's tests reuse the ledger and gRPC builders of tests/unit/core."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
