"""Orderer consensus core: ECVRF lottery, quorum arithmetic, the co-sign replica state
machine, block certificate checks and a seeded network simulator. Pure: no I/O."""
