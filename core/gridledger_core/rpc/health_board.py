"""A node's health from several components, each reporting on its own.

A node with more than one working thread (a meter agent reads its meter and trades) must not
let one component's recovery hide another's failure: with one shared flag, the reading loop's
next clean pass turned the node SERVING while its pre-sale trader was failing. The node is
SERVING while every component last reported healthy; the combined status is published only
when it changes.

Two statuses, because the kubelet asks two questions (k8s manifests): liveness (the overall
service "") — would a restart mend it? — and readiness (the role's service name) — can it do
its job now? A component that fails in itself (a loop whose passes fail on its disk, a bug)
is a liveness component and turns both NOT_SERVING. A readiness component reports what a
restart cannot mend, such as the agent's committer being away: it turns only the role's
service NOT_SERVING, so an outage elsewhere takes the node out of service without its
liveness probe restarting it through the outage into CrashLoopBackOff.
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


Publish = Callable[[bool, bool], None]  # (live, ready), e.g. NodeServer.set_health


class HealthBoard:
    def __init__(self, publish: Publish | None = None) -> None:
        """`publish(live, ready)` sets the node's health (NodeServer.set_health); it may be
        attached later (`attach`), once the server exists: reports before then are kept and
        the combined status published at `attach`."""
        self._publish = publish
        self._failing: set[str] = set()
        self._readiness_only: set[str] = set()
        self._published = (True, True)  # (live, ready) last published: a new server's
        self._lock = threading.Lock()

    def attach(self, publish: Publish) -> None:
        """Publish to `publish` from now on, starting with the status the components' reports
        so far make (if it is not the new server's SERVING)."""
        with self._lock:
            self._publish = publish
            self._published = (True, True)
            self._publish_if_changed()

    def reporter(self, component: str) -> Callable[[bool], None]:
        """The `on_health(healthy)` callback of one liveness component."""
        COMPONENT_HEALTHY.labels(component).set(1)
        return lambda healthy: self._report(component, healthy)

    def readiness(self, component: str) -> Callable[[bool], None]:
        """The `on_ready(ready)` callback of one readiness component: it turns only the
        role's service NOT_SERVING."""
        with self._lock:
            self._readiness_only.add(component)
        return self.reporter(component)

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
        live = not (self._failing - self._readiness_only)
        status = (live, live and not self._failing)
        if status == self._published or self._publish is None:
            return
        try:
            self._publish(*status)
        except Exception:  # e.g. the server's loop closed at shutdown: tried again later
            log.exception("publishing health (live, ready) %s failed", status)
            return
        self._published = status
