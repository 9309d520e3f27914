"""The endorser's front processes (front.py): started with it, watched, started again when
one exits, stopped when it stops.

A front that dies closes its listening socket and the kernel gives new connections to the
others, so the port keeps serving while one is left; the endorser reports NOT_SERVING (the
"fronts" component of its health) while no front has its relay open (main.py, relay.py's
stream count), and counts every restart.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

RESTARTS = Counter("gridledger_endorser_front_restarts_total",
                   "Endorser front processes started again after they exited.")
RUNNING = Gauge("gridledger_endorser_fronts_running",
                "Endorser front processes running (taking calls on the public port).")

POLL_S = 0.5
# A front that exits this soon after its start waits this long before the next start: a
# broken configuration must not become a tight loop of process starts.
QUICK_EXIT_S = 5.0


class Fronts:
    def __init__(self, command: Callable[[int], Sequence[str]], count: int) -> None:
        """`command(index)`: the argv of front number `index`."""
        if count < 1:
            raise ValueError("an endorser with fronts has at least one")
        self._command = command
        self._count = count
        self._processes: list[subprocess.Popen[bytes] | None] = [None] * count
        self._started_at = [0.0] * count
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="endorser-fronts",
                                        daemon=True)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._live()]

    def _live(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self._processes if p is not None and p.poll() is None]

    def start(self) -> None:
        for index in range(self._count):
            self._start(index)
        self._report()
        self._thread.start()

    def _start(self, index: int) -> None:
        self._processes[index] = subprocess.Popen(list(self._command(index)))
        self._started_at[index] = time.monotonic()

    def _watch(self) -> None:
        while not self._stopping.wait(POLL_S):
            try:
                self._restart_exited()
            except Exception:  # e.g. fork failed: log, report, try again next poll
                log.exception("restarting an endorser front failed")
            self._report()

    def _restart_exited(self) -> None:
        for index, process in enumerate(self._processes):
            if process is None or process.poll() is None or self._stopping.is_set():
                continue
            if time.monotonic() - self._started_at[index] < QUICK_EXIT_S:
                continue  # started again once it has been down QUICK_EXIT_S from its start
            log.error("endorser front %d (pid %d) exited with %s; starting it again", index,
                      process.pid, process.returncode)
            RESTARTS.inc()
            self._start(index)

    def _report(self) -> None:
        RUNNING.set(len(self.pids))

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop the fronts (SIGTERM: they finish the calls they relayed within `grace_s`),
        killing what is left after that."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=POLL_S + 5)
        live = self._live()
        for process in live:
            process.terminate()
        deadline = time.monotonic() + grace_s + 2
        for process in live:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("endorser front pid %d did not stop; killing it", process.pid)
                process.kill()
                process.wait()
        RUNNING.set(0)
