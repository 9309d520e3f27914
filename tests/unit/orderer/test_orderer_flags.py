"""The orderer's batching flags refuse what would break ordering, before anything is opened."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from gridledger_orderer import main as orderer_main


@pytest.mark.parametrize("text", ["0", "-0.1", "nan", "inf", "61"])
def test_a_wait_must_be_a_positive_finite_number_of_seconds(text: str) -> None:
    """NaN compared false everywhere: a NaN block wait cut a block only when it was full."""
    with pytest.raises(Exception, match="above 0 and at most 60 s"):
        orderer_main._SECONDS(text)
    assert math.isclose(orderer_main._SECONDS("0.1"), 0.1)


def test_a_block_wait_not_below_the_round_timeout_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Replicas that wait a round timeout for a proposal the primary holds back longer would
    change rounds instead of ordering."""
    argv = ["--name", "orderer-1", "--consortium-dir", str(tmp_path), "--data-dir",
            str(tmp_path / "data"), "--max-batch-wait", "1", "--round-timeout", "1"]
    with pytest.raises(SystemExit) as exited:
        orderer_main.main(argv)
    assert exited.value.code == 2
    assert "--max-batch-wait (1 s) must be below --round-timeout (1 s)" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()
