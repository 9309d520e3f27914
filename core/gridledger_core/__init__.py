"""GridLedger's shared core: every rule of the ledger, written once, imported by every role.

Services (endorser, orderer, committer, meter-agent) are thin gRPC adapters around this package.
"""
