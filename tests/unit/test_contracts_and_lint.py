"""The protobuf contracts pass `buf lint` (STANDARD) and the code passes `ruff`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_buf_lint_standard() -> None:
    result = subprocess.run([str(BIN / "buf"), "lint"], cwd=ROOT / "protos",
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_role_has_its_own_versioned_package() -> None:
    for role in ("common", "endorser", "orderer", "committer", "meteragent"):
        protos = list((ROOT / "protos" / "gridledger" / role / "v1").glob("*.proto"))
        assert protos, role
        for proto in protos:
            assert f"package gridledger.{role}.v1;" in proto.read_text()


def test_ruff_clean() -> None:
    result = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_code_is_not_committed() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:  # not a git checkout (e.g. an unpacked source tree)
        return
    assert not [f for f in tracked.stdout.split() if f.endswith(("_pb2.py", "_pb2_grpc.py"))]
