"""Committer: verifies final blocks, re-executes them with the shared rules, keeps the LMDB
ledger, answers queries and streams commit events."""
