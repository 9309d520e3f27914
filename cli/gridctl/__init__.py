"""gridctl: the GridLedger command line (consortium, local network, ledger queries)."""
