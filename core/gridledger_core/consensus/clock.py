"""The clock skew the orderer cluster tolerates, and what it means for time-bound rules.

A primary's block time may not be ahead of an auxiliary's clock by more than the skew, nor a
fresh pre-block's behind its arrival by more, and never before the previous block's
(protocol.py). So while rounds go well block times trail any honest clock by at most the
skew, and a rule judged at block time ("placed before the option expires") can still pass for
a while after the deadline on a node's clock. After round changes a locked pre-block is
re-proposed with its original time, so a block's time can trail by the skew plus the time
the rounds took (timeouts doubling up to the cap): only a block whose time is past a
deadline proves that no later block can meet it.
"""

from __future__ import annotations

MAX_CLOCK_SKEW_S = 5.0

# Once a clock within the skew of the orderers' reads deadline + this, no later block cut in
# its first round can have a time at or before the deadline (twice: this clock and the
# primary's may be off either way). A guide for freeing what a deadline held, not a proof.
DEADLINE_SETTLED_AFTER_S = int(2 * MAX_CLOCK_SKEW_S) + 1
