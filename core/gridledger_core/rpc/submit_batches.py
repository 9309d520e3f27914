"""What one SubmitBatch call may carry, and how a client splits envelopes into such calls.

The endorser refuses a whole request above these limits (INVALID_ARGUMENT), and gRPC refuses
one above its receive limit before reading it ("larger than max"), so a client that chunked
by count alone would have a run of large envelopes (history chunks, up to the genesis
`max_tx_bytes` each) refused whole, and its retries refused the same way. Splitting by bytes
too keeps every call within both."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

SUBMIT_BATCH_ENVELOPES = 1_000
SUBMIT_BATCH_BYTES = 4 << 20
# A repeated message field's framing per element: its tag (1 byte) and length (at most 5).
_FRAMING = 6

T = TypeVar("T")


def submit_batches(items: Sequence[T], size_of: Callable[[T], int], *,
                   max_count: int = SUBMIT_BATCH_ENVELOPES,
                   max_bytes: int = SUBMIT_BATCH_BYTES) -> Iterator[list[T]]:
    """`items` in order, in consecutive runs of at most `max_count` whose request holds at
    most `max_bytes` (each item's `size_of` bytes plus its framing). An item too large for
    any request goes alone: the endorser's refusal then names it, not its neighbours."""
    run: list[T] = []
    run_bytes = 0
    for item in items:
        size = size_of(item) + _FRAMING
        if run and (len(run) >= max_count or run_bytes + size > max_bytes):
            yield run
            run, run_bytes = [], 0
        run.append(item)
        run_bytes += size
    if run:
        yield run
