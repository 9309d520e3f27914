"""Splitting envelopes into SubmitBatch calls by count and by bytes (core rpc/submit_batches.py;
the meter agent's use of it: tests/unit/meter_agent/test_sender_batches.py)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from gridledger_core.rpc.submit_batches import submit_batches


@given(sizes=st.lists(st.integers(0, 400), max_size=60), max_count=st.integers(1, 8),
       max_bytes=st.integers(1, 1_000))
def test_runs_keep_order_and_both_limits(sizes: list[int], max_count: int,
                                         max_bytes: int) -> None:
    runs = list(submit_batches(list(enumerate(sizes)), lambda item: item[1],
                               max_count=max_count, max_bytes=max_bytes))
    assert [item for run in runs for item in run] == list(enumerate(sizes))
    for run in runs:
        assert run and len(run) <= max_count
        assert len(run) == 1 or sum(size + 6 for _, size in run) <= max_bytes
    for run, following in itertools.pairwise(runs):  # each run as long as it can be
        assert len(run) == max_count or \
            sum(size + 6 for _, size in [*run, following[0]]) > max_bytes

