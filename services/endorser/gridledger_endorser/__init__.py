"""Endorser: admits signed transactions from devices against its replica of the ledger,
endorses them and forwards them to the orderer cluster."""
