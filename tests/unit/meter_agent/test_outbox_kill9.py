"""The outbox survives kill -9: a child appends and "sends" (sink file, fsync, then ack) and
is SIGKILLed at random moments, restarted each time. Afterwards every item was sent at
least once, in order, and the only repeats are resends of the batch that was sent but not
yet acked when the child died (the ledger drops those by tx id)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

TOTAL = 300
BATCH = 7
KILLS = 6

# The child keeps its production cursor in the outbox meta, written in the same transaction
# as the append (as the agent does with its reading cursor), so an append lost or doubled
# by a crash would show as a gap or a repeat in the sink.
CHILD = r"""
import os, sys
from pathlib import Path
from gridledger_meter_agent.outbox import Outbox

data, sink_path, total, batch = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
# A batch line cut short by the kill never reached the "ledger": drop it.
if os.path.exists(sink_path):
    raw = open(sink_path, "rb").read()
    if raw and not raw.endswith(b"\n"):
        with open(sink_path, "r+b") as f:
            f.truncate(raw.rfind(b"\n") + 1)
box = Outbox(data)
sink = os.open(sink_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
step = 0
while True:
    step += 1
    seq = None
    produced = int(box.get_meta(b"produced") or b"0")
    if produced < total:
        seq = box.append(b"tx-%05d" % produced, meta={b"produced": b"%d" % (produced + 1)})
    pending = box.peek(batch)
    if not pending:
        break
    if seq is None or len(pending) >= batch or step % 3 == 0:
        os.write(sink, b" ".join(p for _, p in pending) + b"\n")
        os.fsync(sink)
        box.ack(pending[-1][0])
box.close()
"""


def _spawn(tmp: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            str(tmp / "agent"),
            str(tmp / "sink"),
            str(TOTAL),
            str(BATCH),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _sink_size(tmp: Path) -> int:
    try:
        return (tmp / "sink").stat().st_size
    except FileNotFoundError:
        return 0


def test_outbox_survives_repeated_kill_9(tmp_path: Path) -> None:
    rnd = random.Random(20261121)
    kills = 0
    for _ in range(KILLS):
        before = _sink_size(tmp_path)
        child = _spawn(tmp_path)
        # Pace on progress (not on time): wait until the child has sent something more,
        # then kill it a random instant later, mid-append, mid-send or mid-ack.
        deadline = time.monotonic() + 120
        while _sink_size(tmp_path) == before and child.poll() is None:
            assert time.monotonic() < deadline, "child made no progress"
            time.sleep(0.002)
        time.sleep(rnd.uniform(0.0, 0.03))
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            kills += 1
        child.wait()
    final = _spawn(tmp_path)
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err.decode()
    assert kills >= 3, "the child finished before it could be killed enough times"

    lines = (tmp_path / "sink").read_bytes().decode().splitlines()
    delivered = 0  # next id never seen before
    previous: list[int] | None = None
    resends = 0
    for line in lines:
        ids = [int(token.split("-")[1]) for token in line.split()]
        assert ids == list(range(ids[0], ids[0] + len(ids))), f"out of order: {line}"
        if ids[0] != delivered:
            # A repeat may only be the previous, unacked batch sent again (maybe longer).
            assert previous is not None and ids[0] == previous[0], f"unexpected repeat: {line}"
            assert ids[0] < delivered
            resends += 1
        delivered = max(delivered, ids[-1] + 1)
        previous = ids
    assert delivered == TOTAL
    assert resends <= kills

    # And the outbox is empty afterwards.
    from gridledger_meter_agent.outbox import Outbox

    box = Outbox(tmp_path / "agent")
    try:
        assert box.pending() == 0
    finally:
        box.close()
    assert os.path.exists(tmp_path / "agent")
