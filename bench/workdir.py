"""A benchmark network's directory: its ledgers and logs are hundreds of MB per run, so a run
that created it removes it when it succeeds, and keeps it (saying where) when it fails."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def removed_unless_failed(directory: Path, *, owned: bool = True) -> Iterator[None]:
    """Remove `directory` after the block succeeds (only if `owned`: this run created it)."""
    try:
        yield
    except BaseException:
        if owned:
            print(f"  the run's ledgers and logs are kept in {directory}", flush=True)
        raise
    if owned:
        shutil.rmtree(directory, ignore_errors=True)
