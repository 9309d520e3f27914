"""Endorser: admits signed transactions from devices against the ledger (its replica, or its
organisation's committer's),
endorses them and forwards them to the orderer cluster."""
