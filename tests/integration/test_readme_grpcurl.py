"""The README's grpcurl commands, run exactly as written against a devnet (only the path of
network.json and of the venv's binaries are pointed at this test's network)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from devnet_support import committer_stub, height, wait_for

from gridctl import devnet
from gridledger.committer.v1 import committer_pb2

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_commands() -> str:
    text = README.read_text()
    block = re.search(r"<!-- grpcurl-commands -->\s*```sh\n(.*?)```", text, re.S)
    assert block, "README lost its grpcurl block"
    return block.group(1)


def test_readme_grpcurl_commands_answer(network: devnet.Network) -> None:
    stub = committer_stub(network, "committer-1")
    wait_for(lambda: height(stub) >= 2, 60, "two blocks")
    script = readme_commands()
    script = script.replace(".devnet/network.json", str(network.network_file))
    script = script.replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "gridledger.committer.v1.CommitterService" in out
    assert '"status": "SERVING"' in out
    assert '"height":' in out and '"state_root":' in out
    assert '"validation_codes":' in out and '"tx_ids":' in out
    assert '"validation_code": "TX_VALIDATION_CODE_VALID"' in out
    assert '"code": 6' in out  # SubmitBatch's result for a committed tx: ALREADY_EXISTS


def test_gridctl_state_get_decodes_by_key(network: devnet.Network) -> None:
    stub = committer_stub(network, "committer-1")
    wait_for(lambda: len(stub.ListReadings(committer_pb2.ListReadingsRequest(
        meter="meter-2", page_size=1), timeout=5).readings) == 1, 60, "a reading of meter-2")
    first = stub.ListReadings(committer_pb2.ListReadingsRequest(meter="meter-2", page_size=1))
    reading = first.readings[0]
    key = f"reading/meter-2/{reading.interval_start:012d}"
    gridctl = str(Path(sys.executable).parent / "gridctl")
    result = subprocess.run([gridctl, "state", "get", key, "--dir", str(network.directory),
                             "--json"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    value = json.loads(result.stdout)["value"]
    assert value["meter"] == "meter-2"
    assert int(value["interval_start"]) == reading.interval_start
    missing = subprocess.run([gridctl, "state", "get", "reading/nobody/000000000000",
                              "--dir", str(network.directory)], capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 3 and "no state under" in missing.stderr
