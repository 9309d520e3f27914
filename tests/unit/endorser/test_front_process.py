"""An endorser front's process (front.py's main): its relay to the endorser only ends when
the front is stopped; should it end otherwise, the front exits with status 1 for the
endorser's supervisor (fronts.py) to start it again, never serving on without a relay."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gridledger_endorser import front


@pytest.mark.timeout(60)  # the old front served on without a relay, for good
def test_a_front_whose_relay_ends_exits_to_be_started_again(
        consortium_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def ends_at_once(_relay: front.Relay) -> None:
        raise RuntimeError("a bug in the relay")
    monkeypatch.setattr(front.Relay, "run", ends_at_once)
    endorser = next(p.name for p in (consortium_dir / "nodes").iterdir()
                    if p.name.startswith("endorser"))
    with pytest.raises(SystemExit) as exit_status:
        front.main(["--name", endorser, "--consortium-dir", str(consortium_dir),
                    "--listen", "127.0.0.1:0", "--relay-socket", str(tmp_path / "calls.sock"),
                    "--receive-bytes", "65536", "--calls-per-member", "8",
                    "--endorser-pid", str(os.getppid()), "--grace-s", "0"])
    assert exit_status.value.code == 1
