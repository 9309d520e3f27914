"""A node's health from several components (rpc/health_board.py): one component's recovery
must not hide another's failure."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from gridledger_core.rpc.health_board import HealthBoard


def test_a_recovered_component_does_not_hide_another_failing() -> None:
    published: list[bool] = []
    board = HealthBoard(published.append)
    readings, presale = board.reporter("readings"), board.reporter("presale")
    presale(False)
    readings(False)
    readings(True)  # with one flag this turned the node SERVING again
    assert published == [False]
    presale(True)
    assert published == [False, True]


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.booleans()), max_size=40))
def test_serving_exactly_while_every_component_last_reported_healthy(
        reports: list[tuple[str, bool]]) -> None:
    published: list[bool] = []
    board = HealthBoard(published.append)
    last: dict[str, bool] = {}
    for component, healthy in reports:
        board.reporter(component)(healthy)
        last[component] = healthy
        serving = all(last.values())
        assert (published[-1] if published else True) == serving
        assert board.failing == {c for c, ok in last.items() if not ok}
    # Published only on a change: no two equal statuses in a row, and never SERVING first.
    assert all(a != b for a, b in itertools.pairwise(published))
    assert published[:1] in ([], [False])


def test_a_status_that_could_not_be_published_is_published_on_the_next_report() -> None:
    published: list[bool] = []
    fail = [True]

    def publish(serving: bool) -> None:
        if fail[0]:
            raise RuntimeError("the server's loop is closed")
        published.append(serving)

    board = HealthBoard(publish)
    report = board.reporter("presale")
    report(False)  # does not raise into the reporting thread
    fail[0] = False
    report(False)
    assert published == [False]


def test_reports_before_the_server_exists_are_published_when_it_is_attached() -> None:
    board = HealthBoard()  # the node's server is made after the components that report
    readings = board.reporter("readings")
    readings(False)
    published: list[bool] = []
    board.attach(published.append)
    assert published == [False]
    readings(True)
    assert published == [False, True]
    quiet: list[bool] = []
    healthy = HealthBoard()
    healthy.reporter("readings")(True)
    healthy.attach(quiet.append)
    assert quiet == []  # a new server already says SERVING
