"""The ledger: transaction checks, state transitions and block commit, shared by every role."""
