"""A devnet started through the same launcher `gridctl devnet up` uses, once per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from devnet_support import dump_logs_on_failure

from gridctl import devnet


@pytest.fixture(scope="module")
def network(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[devnet.Network]:
    directory = tmp_path_factory.mktemp("devnet")
    consortium = directory / "consortium"
    # A module that drives the load generator's past readings sets GENESIS_PROFILE = "load".
    devnet.ensure_consortium(consortium,
                             profile=getattr(request.module, "GENESIS_PROFILE", "standard"))
    # A day and a bit of history, so the meters' forecasts (same hour on earlier days) see
    # something and the demo's pre-sale orders are placed.
    net = devnet.plan(directory, consortium, demo=True, backfill_hours=26)
    devnet.start(net)
    try:
        yield net
    finally:
        devnet.stop(net)
        dump_logs_on_failure(net)
