"""The launcher notices a node as soon as it serves, when the launcher runs gRPC as the nodes do
(grpc_env.py: the benchmark does). Before, `wait_healthy` kept one channel for all its looks,
made before the node listened; under `-event_engine_client` that channel stayed unconnected
for about 15-20 s after the node was up, every role of a start-up waited that long for the one
before, and a devnet took about 66 s to start instead of about 3 (docs/performance.md). Now
each look opens its own channel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gridctl import devnet
from gridledger_core.rpc import grpc_env

# In a process of its own, so gRPC reads the nodes' settings before it is first imported.
PROBE = """
import json, sys, time
from pathlib import Path
from gridctl import devnet

network = devnet.Network.load(Path(sys.argv[1]))
node = network.node("orderer-1")
spawned = time.monotonic()
devnet._spawn(node)  # it listens after its imports: the first looks find nothing there
try:
    devnet.wait_healthy(network, node, 60)
    print(json.dumps({"after_spawn_s": time.monotonic() - spawned}))
finally:
    devnet.stop_node(node)
"""


def test_a_node_that_starts_after_the_first_look_is_seen_serving_within_seconds(
        tmp_path: Path) -> None:
    consortium = tmp_path / "consortium"
    devnet.ensure_consortium(consortium)
    network = devnet.plan(tmp_path, consortium, demo=False)
    (tmp_path / "logs").mkdir()
    network.save()
    env = grpc_env.environment(os.environ)
    assert "-event_engine_client" in env["GRPC_EXPERIMENTS"]
    result = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    after_spawn = json.loads(result.stdout.strip().splitlines()[-1])["after_spawn_s"]
    # An orderer serves under a second after it is spawned here; before, 15-20 s went by.
    assert after_spawn < 8, f"seen serving {after_spawn:.1f} s after it was spawned"
