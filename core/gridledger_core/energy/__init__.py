"""New-energy trading (seed 002) pieces every role shares: contract ids, delivery
attribution, carbon certificates. Pure functions; the ledger rules are in ledger/rules/energy.py."""
