"""A node's health from several components, each reporting on its own.

A node with more than one working thread (a meter agent reads its meter and trades) must not
let one component's recovery hide another's failure: with one shared flag, the reading loop's
next clean pass turned the node SERVING while its pre-sale trader was failing. The node is
SERVING while every component last reported healthy; the combined status is published only
when it changes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from prometheus_client import Gauge

log = logging.getLogger(__name__)

COMPONENT_HEALTHY = Gauge("gridledger_component_healthy",
                          "1 while the node's component last reported it works, 0 while it "
                          "fails.", ["component"])


class HealthBoard:
    def __init__(self, publish: Callable[[bool], None] | None = None) -> None:
        """`publish(serving)` sets the node's health (e.g. NodeServer.set_serving); it may
        be attached later (`attach`), once the server exists: reports before then are kept
        and the combined status published at `attach`."""
        self._publish = publish
        self._failing: set[str] = set()
        self._serving = True  # what was last published (a new server starts SERVING)
        self._lock = threading.Lock()

    def attach(self, publish: Callable[[bool], None]) -> None:
        """Publish to `publish` from now on, starting with the status the components' reports
        so far make (if it is not the new server's SERVING)."""
        with self._lock:
            self._publish = publish
            self._serving = True
            self._publish_if_changed()

    def reporter(self, component: str) -> Callable[[bool], None]:
        """The `on_health(healthy)` callback of one component."""
        COMPONENT_HEALTHY.labels(component).set(1)
        return lambda healthy: self._report(component, healthy)

    @property
    def failing(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._failing)

    def _report(self, component: str, healthy: bool) -> None:
        COMPONENT_HEALTHY.labels(component).set(1 if healthy else 0)
        with self._lock:
            if healthy:
                self._failing.discard(component)
            else:
                self._failing.add(component)
            self._publish_if_changed()

    def _publish_if_changed(self) -> None:
        """Under the lock: two reports cannot publish their statuses out of order."""
        serving = not self._failing
        if serving == self._serving or self._publish is None:
            return
        try:
            self._publish(serving)
        except Exception:  # e.g. the server's loop closed at shutdown: tried again later
            log.exception("publishing health %s failed", serving)
            return
        self._serving = serving
