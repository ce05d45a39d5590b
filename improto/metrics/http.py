"""
Serving the metrics: :class:`MetricsResource` (``GET /metrics`` in the
Prometheus text format, written by ``prometheus_client``), and
:func:`with_metrics`, which puts it where ``--metrics`` says: nowhere (the
default), on the main port (``main``), or on a listening endpoint of its own
that serves nothing else (e.g. ``tcp:9100:interface=127.0.0.1``).
"""

from __future__ import annotations

import sys
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from improto.metrics.counters import ServerMetrics

_log = Logger()
#: The ``--metrics`` value that serves /metrics on the main (public) port.
MAIN = "main"


class MetricsResource(Resource):
    """``GET /metrics``: the registry in the Prometheus text exposition format."""

    isLeaf = True

    def __init__(self, metrics: ServerMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return generate_latest(self._metrics.registry)


class _UnloggedSite(Site):
    """A scrape every few seconds is no news: no access-log line per request."""

    def log(self, request: Any) -> None:  # twisted.web.http.Request, not server's
        pass


def metrics_site(metrics: ServerMetrics) -> Site:
    """A site with ``/metrics`` and nothing else (every other path is 404)."""
    root = Resource()
    root.putChild(b"metrics", MetricsResource(metrics))
    site = _UnloggedSite(root)
    site.noisy = False
    return site


class MetricsService(service.Service):
    """Listens on the metrics endpoint; a port that cannot be had ends the server."""

    name = "improto-metrics"

    def __init__(self, endpoint_description: str, site: Site, reactor: Any) -> None:
        self.description = endpoint_description
        self.endpoint = serverFromString(reactor, endpoint_description)
        self.site = site
        self.reactor = reactor
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        failed: list[str] = []
        d: Deferred[IListeningPort] = self.endpoint.listen(self.site)
        d.addCallbacks(self._listening, lambda f: failed.append(self._failed(f)))
        if failed and not self.reactor.running:
            stderr = sys.__stderr__ or sys.stderr
            stderr.write(failed[0] + "\n")
            stderr.flush()
            raise SystemExit(1)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        address = port.getHost()
        _log.info("improto metrics on http://{host}:{port}/metrics ({description})",
                  host=getattr(address, "host", "?"), port=getattr(address, "port", "?"),
                  description=self.description)

    def _failed(self, failure: Failure) -> str:
        error = failure.getErrorMessage()
        _log.critical("improto metrics could not listen: {error}", error=error)
        return f"twistd improto: could not serve --metrics on {self.description}: {error}"

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


def with_metrics(
    server: service.IService, metrics: ServerMetrics | None, option: str | None, reactor: Any
) -> service.IService:
    """``server``, with the metrics endpoint beside it if ``option`` names one."""
    if metrics is None or option in (None, MAIN):
        return server
    both = service.MultiService()
    server.setServiceParent(both)
    MetricsService(str(option), metrics_site(metrics), reactor).setServiceParent(both)
    return both
