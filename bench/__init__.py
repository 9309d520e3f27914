"""Benchmarks; each module has `run(profile) -> dict` and runs on its own with `-m`."""
