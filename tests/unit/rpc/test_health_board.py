"""A node's health from several components (rpc/health_board.py): one component's recovery
must not hide another's failure, and a readiness component (what a restart cannot mend, such
as the agent's committer away) turns only readiness off, never liveness."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from gridledger_core.rpc.health_board import HealthBoard

Published = list[tuple[bool, bool]]


def _recorder() -> tuple[Published, HealthBoard]:
    published: Published = []
    return published, HealthBoard(lambda live, ready: published.append((live, ready)))


def test_a_recovered_component_does_not_hide_another_failing() -> None:
    published, board = _recorder()
    readings, presale = board.reporter("readings"), board.reporter("presale")
    presale(False)
    readings(False)
    readings(True)  # with one flag this turned the node SERVING again
    assert published == [(False, False)]
    presale(True)
    assert published == [(False, False), (True, True)]


def test_a_readiness_component_turns_readiness_off_and_leaves_liveness_on() -> None:
    """The settlement agent's committer away: with one status the liveness probe restarted
    the agent through the outage (into CrashLoopBackOff); now it is only taken out of
    service, and back in when its committer is."""
    published, board = _recorder()
    settlement = board.reporter("settlement")
    ledger = board.readiness("settlement.ledger")
    ledger(False)
    assert published == [(True, False)]
    settlement(False)  # its own failure as well: not live
    settlement(True)
    ledger(True)
    assert published == [(True, False), (False, False), (True, False), (True, True)]
    assert board.failing == frozenset()


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "ready-d", "ready-e"]),
                          st.booleans()), max_size=40))
def test_live_and_ready_exactly_from_the_components_last_reports(
        reports: list[tuple[str, bool]]) -> None:
    published, board = _recorder()
    last: dict[str, bool] = {}
    for component, healthy in reports:
        report = (board.readiness(component) if component.startswith("ready-")
                  else board.reporter(component))
        report(healthy)
        last[component] = healthy
        live = all(ok for c, ok in last.items() if not c.startswith("ready-"))
        ready = live and all(last.values())
        assert (published[-1] if published else (True, True)) == (live, ready)
        assert board.failing == {c for c, ok in last.items() if not ok}
    # Published only on a change: no two equal statuses in a row, and never SERVING first;
    # never ready while not live.
    assert all(a != b for a, b in itertools.pairwise(published))
    assert (True, True) not in published[:1]
    assert (False, True) not in published


def test_a_status_that_could_not_be_published_is_published_on_the_next_report() -> None:
    published: Published = []
    fail = [True]

    def publish(live: bool, ready: bool) -> None:
        if fail[0]:
            raise RuntimeError("the server's loop is closed")
        published.append((live, ready))

    board = HealthBoard(publish)
    report = board.reporter("presale")
    report(False)  # does not raise into the reporting thread
    fail[0] = False
    report(False)
    assert published == [(False, False)]


def test_reports_before_the_server_exists_are_published_when_it_is_attached() -> None:
    board = HealthBoard()  # the node's server is made after the components that report
    readings = board.reporter("readings")
    readings(False)
    published: Published = []
    board.attach(lambda live, ready: published.append((live, ready)))
    assert published == [(False, False)]
    readings(True)
    assert published == [(False, False), (True, True)]
    quiet: Published = []
    healthy = HealthBoard()
    healthy.reporter("readings")(True)
    healthy.attach(lambda live, ready: quiet.append((live, ready)))
    assert quiet == []  # a new server already says SERVING
