"""The end-to-end benchmark's PNG: throughput and latency over time, latency distribution."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt


def render(phases: dict[str, dict], path: Path, title: str) -> None:
    """One column per phase (series from `e2e_report.analyse`): committed and sent tx/s per
    second, p50/p99 submit-to-commit latency per second, and the latency histogram."""
    names = list(phases)
    figure, axes = plt.subplots(3, len(names), figsize=(6 * len(names), 10), squeeze=False)
    for column, name in enumerate(names):
        series = phases[name]
        seconds = series["second"]
        start, end = series["window"]
        top, middle, bottom = axes[0][column], axes[1][column], axes[2][column]
        top.plot(seconds, series["sent_per_s"], label="jobs sent", color="tab:gray")
        top.plot(seconds, series["committed_per_s"], label="committed (valid)", color="tab:blue")
        top.set_title(name.replace("_", " "))
        top.set_ylabel("per second")
        for axis in (top, middle):
            axis.axvspan(start, end, color="tab:green", alpha=0.08, label="measured window")
            axis.set_xlabel("seconds since start")
        top.legend(loc="upper right", fontsize="small")
        middle.plot(seconds, [v if v is not None else float("nan") for v in series["p50_ms"]],
                    label="p50", color="tab:blue")
        middle.plot(seconds, [v if v is not None else float("nan") for v in series["p99_ms"]],
                    label="p99", color="tab:red")
        middle.set_ylabel("submit -> commit, ms")
        middle.legend(loc="upper right", fontsize="small")
        latencies = series["latencies_ms"]
        if latencies:
            bottom.hist(latencies, bins=60, color="tab:purple")
        bottom.set_xlabel("submit -> commit, ms")
        bottom.set_ylabel("transactions")
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
