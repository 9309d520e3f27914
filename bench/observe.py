"""What the end-to-end benchmark watches while the load runs: commits on every committer,
the processes' CPU time and peak memory, and the nodes' own Prometheus histograms."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import grpc
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gridctl import devnet
from gridledger.committer.v1 import committer_pb2, committer_pb2_grpc
from gridledger.common.v1 import validation_pb2
from gridledger_core.rpc.tls import secure_channel

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
VALID = validation_pb2.TX_VALIDATION_CODE_VALID


@dataclass
class BlockSeen:
    number: int
    at: float
    transactions: int


@dataclass
class CommitLog:
    """One committer's commits: when each tx id was seen committed, and with what code."""

    committer: str
    commits: dict[str, tuple[float, int]] = field(default_factory=dict)
    blocks: list[BlockSeen] = field(default_factory=list)


class CommitFollower:
    """Follows a committer's SubscribeCommits stream from `start` in a background thread."""

    def __init__(self, network: devnet.Network, committer: devnet.Node, start: int) -> None:
        self.log = CommitLog(committer.name)
        self._channel = secure_channel(committer.grpc, network.tls())
        stub = committer_pb2_grpc.CommitterServiceStub(self._channel)
        self._call = stub.SubscribeCommits(committer_pb2.SubscribeCommitsRequest(
            start_number=start))
        self._thread = threading.Thread(target=self._run, name=f"follow-{committer.name}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        commits, blocks = self.log.commits, self.log.blocks
        try:
            for event in self._call:
                now = time.monotonic()
                blocks.append(BlockSeen(event.number, now, len(event.results)))
                for result in event.results:
                    commits[result.tx_id] = (now, result.validation_code)
        except grpc.RpcError:
            pass

    def stop(self) -> None:
        self._call.cancel()
        self._thread.join(timeout=5)
        self._channel.close()


def wait_committed(logs: Sequence[CommitLog], tx_ids: Iterable[str], timeout: float) -> bool:
    """True when every tx id is committed on every log (valid or not) within `timeout`."""
    pending = set(tx_ids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = {t for t in pending if not all(t in log.commits for log in logs)}
        if not pending:
            return True
        time.sleep(0.1)
    return False


# -- processes --------------------------------------------------------------------------------

def stat_cpu_seconds(stat: Path) -> float:
    """User + system CPU seconds from a process's or a thread's `stat` file (OSError if it
    is gone). The name in parentheses may hold anything, so fields count from its end."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, with its running child processes' (an
    endorser's fronts are part of the endorser): 0.0 if it is gone."""
    return own_cpu_seconds(pid) + sum(cpu_seconds(child) for child in child_pids(pid))


def own_cpu_seconds(pid: int) -> float:
    """`cpu_seconds` of the process alone, without its children."""
    try:
        return stat_cpu_seconds(Path(f"/proc/{pid}/stat"))
    except OSError:
        return 0.0


def _task_dirs(pid: int) -> list[Path]:
    """/proc's directory of each thread of a process (empty if it is gone)."""
    try:
        return [Path(f"/proc/{pid}/task/{tid}") for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def child_pids(pid: int) -> list[int]:
    """The running child processes of `pid` (empty if it is gone)."""
    children: list[int] = []
    for task in _task_dirs(pid):
        with contextlib.suppress(OSError):
            children += [int(c) for c in (task / "children").read_text().split()]
    return children


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU time so far of each thread of a process, by thread id (empty if it
    is gone; a thread that ends between the listing and its read is left out)."""
    out: dict[int, float] = {}
    for task in _task_dirs(pid):
        with contextlib.suppress(OSError):
            out[int(task.name)] = stat_cpu_seconds(task / "stat")
    return out


def busiest_thread_share(before: dict[int, float], after: dict[int, float],
                         seconds: float) -> float:
    """The largest share of `seconds` one thread was on a core between two
    `thread_cpu_seconds` readings (1.0: it never waited for work)."""
    if seconds <= 0:
        return 0.0
    return round(max((cpu - before.get(tid, 0.0) for tid, cpu in after.items()),
                     default=0.0) / seconds, 3)


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size (VmHWM), MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_by_node(nodes: Sequence[devnet.Node]) -> dict[str, float]:
    return {n.name: cpu_seconds(n.pid) for n in nodes}


class MachineCpu(NamedTuple):
    """CPU seconds of the whole machine so far (all cores), from /proc/stat."""

    busy: float  # not idle: our processes, the kernel, and steal
    steal: float  # time the hypervisor gave this virtual machine's CPUs to other guests


def machine_cpu_seconds() -> MachineCpu:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return MachineCpu((sum(fields[:8]) - idle) / CLOCK_TICKS, fields[7] / CLOCK_TICKS)


def share_of_machine(cpu_seconds: float, seconds: float) -> float:
    """CPU seconds as a share of every core's `seconds` (2 cores busy throughout = 1.0)."""
    return round(cpu_seconds / (seconds * (os.cpu_count() or 1)), 3) if seconds > 0 else 0.0


def steal_fraction(before: MachineCpu, after: MachineCpu, seconds: float) -> float:
    """Share of all cores' time the hypervisor ran other guests: on a shared host a phase
    with steal ran on less machine than one without, so its figures are not comparable."""
    return share_of_machine(after.steal - before.steal, seconds)


# -- Prometheus histograms ---------------------------------------------------------------------

Buckets = dict[float, float]  # upper bound -> cumulative count


# The sample names a family's exposition uses (prometheus_client's exporter matches these).
_SAMPLE_SUFFIXES = ("", "_total", "_created", "_bucket", "_count", "_sum", "_gcount", "_gsum",
                    "_info")


def scrape(nodes: Sequence[devnet.Node], family_names: Iterable[str]) -> list[Sample]:
    """The samples of the named metric families on every node's metrics page, one read of
    each page (a node that does not answer contributes none)."""
    wanted = set(family_names)
    # Asked by name: the node's exporter then collects only the collectors that hold these
    # families (prometheus_client's `name[]` parameter), 0.8 ms of a node's CPU per scrape
    # instead of 2.4-3.2 ms for its whole page (measured on an idle devnet).
    query = urllib.parse.urlencode([("name[]", name + suffix) for name in sorted(wanted)
                                    for suffix in _SAMPLE_SUFFIXES])
    samples: list[Sample] = []
    for node in nodes:
        try:
            with urllib.request.urlopen(f"http://{node.metrics}/metrics?{query}",
                                        timeout=5) as page:
                text = page.read().decode()
        except OSError:
            continue
        samples.extend(samples_of(text, wanted))
    return samples


def samples_of(page: str, wanted: set[str]) -> list[Sample]:
    """The samples of the `wanted` metric families on a metrics page. Only their lines are
    parsed: the parser is pure Python and a node's page is mostly other families, and this
    runs at a window's ends, while the machine is measured. (A family whose name starts
    with a wanted one passes the filter too and is dropped after parsing.)"""
    prefixes = tuple(wanted)
    lines = [line for line in page.splitlines()
             if (line[7:] if line.startswith(("# HELP ", "# TYPE ")) else line)
             .startswith(prefixes)]
    return [sample for family in text_string_to_metric_families("\n".join(lines) + "\n")
            if family.name in wanted for sample in family.samples]


def scrape_histogram(nodes: Sequence[devnet.Node], name: str) -> Buckets:
    """The sum over `nodes` of histogram `name`'s cumulative bucket counts."""
    return buckets_of(scrape(nodes, [name]), name)


def buckets_of(samples: Iterable[Sample], name: str) -> Buckets:
    """Histogram `name`'s cumulative bucket counts in `samples`, summed over labels."""
    total: Buckets = {}
    for sample in samples:
        if sample.name == f"{name}_bucket":
            bound = float(sample.labels["le"])
            total[bound] = total.get(bound, 0.0) + sample.value
    return total


def sum_of(samples: Iterable[Sample], name: str) -> float:
    """Histogram `name`'s `_sum` in `samples`, summed over labels."""
    return sum(sample.value for sample in samples if sample.name == f"{name}_sum")


def longest(buckets: Buckets) -> float | None:
    """The upper bound of the bucket that holds the largest observation (cumulative counts:
    the first bound that counted everything); None when nothing was observed."""
    total = max(buckets.values(), default=0.0)
    if total <= 0:
        return None
    return min(bound for bound, count in buckets.items() if count >= total)


def counter_sum(samples: Iterable[Sample], name: str,
                where: Callable[[dict[str, str]], bool] = lambda labels: True) -> float:
    """The sum of counter `name`'s samples (from `scrape`) whose labels satisfy `where`."""
    return sum(sample.value for sample in samples
               if sample.name == f"{name}_total" and where(sample.labels))


def bucket_delta(after: Buckets, before: Buckets) -> Buckets:
    return {bound: count - before.get(bound, 0.0) for bound, count in after.items()}


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket that holds the
    q-quantile; the +Inf bucket answers with the largest finite bound."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            share = (rank - lower_count) / (count - lower_count)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return bounds[-1]
