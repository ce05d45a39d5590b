"""
The server as a Twisted service: start the backend, then listen; on stop,
close every WebSocket with 1001, wait briefly for goodbyes, stop the backend.

A server that cannot start (a taken port, an unreachable backend) exits
non-zero with one line on stderr instead of running on, listening on
nothing.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from improto.router import Router
from improto.settings import Settings

_log = Logger()


def _tell_the_terminal(line: str) -> None:
    """One line on the process's real stderr (twistd sends sys.stderr to the log)."""
    stderr = sys.__stderr__ or sys.stderr
    stderr.write(line + "\n")
    stderr.flush()


class ImprotoService(service.Service):
    name = "improto"

    def __init__(
        self,
        router: Router,
        endpoint: IStreamServerEndpoint,
        site: Site,
        settings: Settings,
        reactor: Any,
        description: str = "",
    ) -> None:
        self.router = router
        self.endpoint = endpoint
        self.site = site
        self.settings = settings
        self.reactor = reactor
        self.description = description
        self.port: IListeningPort | None = None
        self.started: Deferred[IListeningPort] = Deferred()

    def startService(self) -> None:
        super().startService()
        self._failed: str | None = None
        d = self.router.backend.start()
        d.addCallback(lambda _: self.endpoint.listen(self.site))
        d.addCallbacks(self._listening, self._could_not_start)
        if self._failed is not None and not self.reactor.running:
            # twistd starts services before it runs the reactor: a listen
            # that failed at once (a taken port) ends twistd right here.
            self.started.addErrback(lambda _: None)  # logged already; we exit
            _tell_the_terminal(self._failed)
            raise SystemExit(1)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        address = port.getHost()
        _log.info(
            "improto listening on {host}:{port} ({description}), backend {backend}",
            host=getattr(address, "host", "?"),
            port=getattr(address, "port", "?"),
            description=self.description,
            backend=self.router.backend.health().detail,
        )
        self.started.callback(port)

    def _could_not_start(self, failure: Failure) -> None:
        error = failure.getErrorMessage()
        _log.critical("improto could not start: {error}", error=error)
        self._failed = f"twistd improto: could not start on {self.description}: {error}"
        self.started.errback(failure)
        if self.reactor.running:
            # Late (the backend took a while): stop, and exit 1, not 0.
            _tell_the_terminal(self._failed)
            self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
            self.reactor.stop()

    @inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            yield self.port.stopListening()
        count = len(self.router.sessions)
        self.router.close_all(1001, "server is shutting down")
        waited = 0.0
        while self.router.sessions and waited < self.settings.shutdown_grace:
            yield deferLater(self.reactor, 0.05, lambda: None)
            waited += 0.05
        _log.info(
            "Closed {count} connections with 1001; {left} did not answer in time",
            count=count,
            left=len(self.router.sessions),
        )
        yield self.router.backend.stop()
