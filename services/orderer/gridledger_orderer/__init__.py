"""Orderer: one member of the lottery/co-sign cluster, a gRPC and LMDB adapter around the
pure consensus state machine in gridledger_core.consensus."""
