"""The default latency budget, submission to commit, shared by both ends of a call: the
endorser's admission control holds in flight what the network commits within it
(gridledger_endorser/admission.py, `--admission-latency-budget-ms`), and a client's
congestion window takes an admitted answer slower than all of it as a queue ahead of that
bound (congestion.py). Written once here so the two cannot drift apart."""

from __future__ import annotations

DEFAULT_LATENCY_BUDGET_MS = 1_000
