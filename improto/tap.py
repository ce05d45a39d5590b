"""
``twistd improto``: command-line options and the service they describe.

This is the only module that touches the global reactor, and only inside
:func:`makeService`, after twistd has installed the reactor it was asked for.
"""

from __future__ import annotations

import time

from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.python import usage
from twisted.web.server import Site

from improto.backends.url import check_backend_url


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive integer")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def _fail(message: str) -> SystemExit:
    """One line on stderr and exit status 1: no usage text, no traceback."""
    return SystemExit(f"twistd improto: {message}")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run an improto instant-messaging server: a chat page at /, WebSocket chat "
        "routes at /ws/<nickname> and /<nickname>, an echo route at /echo and "
        "health at /healthz."
    )
    optParameters = [
        ["port", "p", "tcp:8080", "Endpoint to listen on, e.g. tcp:8080 or ssl:8443:privateKey=key.pem."],
        ["backend", "b", "memory://", "Delivery backend: memory:// or redis://HOST:PORT/DB."],
        ["max-message-size", None, 65536, "Longest chat message in bytes.", _positive_int],
        ["allowed-origins", None, "*", "Comma-separated Origin patterns allowed to connect."],
        ["static", None, None, "A file (served at /) or folder to replace the chat page."],
        ["rate", None, 20.0, "Messages a second per connection (0 = unlimited).", _non_negative_float],
        ["ping-interval", None, 30.0, "Seconds between WebSocket pings (0 = never).", _non_negative_float],
    ]

    def postOptions(self) -> None:
        try:
            # Parsing needs no reactor; this catches typos before start-up.
            serverFromString(None, self["port"])
        except Exception as e:
            raise _fail(f"bad --port {self['port']!r}: {e}") from None
        try:
            scheme = check_backend_url(self["backend"])
        except ValueError as e:
            raise _fail(str(e)) from None
        if scheme == "redis":
            from improto.backends.redis.options import check_reachable

            try:
                check_reachable(self["backend"], timeout=3.0)
            except Exception as e:  # any failure here is the user's to read
                raise _fail(str(e)) from None
        origins = [o.strip() for o in self["allowed-origins"].split(",") if o.strip()]
        if not origins:
            raise _fail("--allowed-origins needs at least one pattern")
        self["allowed-origins"] = tuple(origins)


def makeService(options: Options) -> IService:
    from twisted.internet import endpoints, reactor

    from improto.backends.url import backend_from_url
    from improto.router import Router, RouterLimits
    from improto.service import ImprotoService
    from improto.settings import Settings
    from improto.web import root_resource

    settings = Settings(
        allowed_origins=options["allowed-origins"],
        ping_interval=options["ping-interval"],
    )
    limits = RouterLimits(
        max_message_size=options["max-message-size"],
        rate=options["rate"],
        burst=options["rate"] * 2,
    )
    backend = backend_from_url(options["backend"], reactor)
    router = Router(backend, limits=limits, clock=time.monotonic)
    site = Site(root_resource(router, settings, reactor, options["static"]))
    site.noisy = False
    endpoint = endpoints.serverFromString(reactor, options["port"])
    return ImprotoService(router, endpoint, site, settings, reactor, options["port"])
