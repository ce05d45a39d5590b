"""
``twistd improto``: command-line options and the service they describe.

It takes the global reactor only inside :func:`makeService`, after twistd
has installed the reactor it was asked for (the other place that does is a
worker process's entry point, :mod:`improto.workers`).

Every option is checked in ``postOptions`` and a bad one ends twistd with
one line on stderr (:func:`_fail`): twistd would print its whole usage
text for a coercer's error, and a traceback for a bad path.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from improto import gctuning
from improto.auth import announce, authenticator_from_options
from improto.backends.interface import Retention
from improto.backends.url import check_backend_url
from improto.gctuning import DEFAULT_THRESHOLD
from improto.router.durable import Durability
from improto.router.limits import RouterLimits
from improto.settings import Settings
from improto.workers import check_workers

_log = Logger()
_SETTINGS = Settings()
_LIMITS = RouterLimits()
_RETENTION = Retention()
_DURABILITY = Durability()


#: Listen queue for TCP and TLS ports that do not set ``backlog=``. Twisted's
#: default of 50 overflows when a few dozen clients connect at once (a page
#: reload of a busy room, a reconnect storm after a restart): the kernel then
#: drops SYNs and each dropped client waits a second or more to retry. The
#: kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024


def with_listen_backlog(port: str) -> str:
    """``port`` with ``backlog=LISTEN_BACKLOG`` added to a tcp/tcp6/ssl endpoint
    that names none; any other endpoint string is returned as it is."""
    kind = port.split(":", 1)[0].lower()
    if kind not in ("tcp", "tcp6", "ssl") or "backlog=" in port:
        return port
    return f"{port}:backlog={LISTEN_BACKLOG}"


def _fail(message: str) -> SystemExit:
    """One line on stderr and exit status 1: no usage text, no traceback."""
    return SystemExit(f"twistd improto: {message}")


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive integer")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be a non-negative integer (0 = unlimited)")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if number < 0 or number != number:
        raise ValueError("must not be negative")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise ValueError("must be a positive number")
    return number


def _g(number: float) -> str:
    return f"{number:g}"


#: Numeric options: name -> parser (raising ValueError with the reason).
_NUMBERS: dict[str, Callable[[str], float]] = {
    "max-message-size": _positive_int,
    "rate": _non_negative_float,
    "ping-interval": _non_negative_float,
    "max-groups": _positive_int,
    "max-connections-per-ip": _non_negative_int,
    "max-connections-per-user": _non_negative_int,
    "max-handshakes-per-ip": _non_negative_int,
    "handshake-timeout": _non_negative_float,
    "idle-timeout": _non_negative_float,
    "max-header-size": _positive_int,
    "auth-leeway": _non_negative_float,
    "history-size": _non_negative_int,
    "history-age": _positive_float,
    "inbox-ttl": _positive_float,
    "idempotency-window": _non_negative_float,
    "history-page-max": _positive_int,
    "workers": _positive_int,
    "gc-threshold": _non_negative_int,
}


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run an improto instant-messaging server: a chat page at /, WebSocket chat "
        "routes at /ws/<nickname> and /<nickname>, an echo route at /echo and "
        "health at /healthz. Limits of 0 are unlimited."
    )
    optFlags = [
        ["no-echo", None, "Turn the echo route off (its path then answers 404)."],
    ]
    optParameters = [
        ["port", "p", "tcp:8080", "Endpoint to listen on, e.g. tcp:8080 or ssl:8443:privateKey=key.pem "
         f"(TCP and TLS ports listen with backlog={LISTEN_BACKLOG} unless the string sets one)."],
        ["backend", "b", "memory://",
         "Delivery backend: memory://, redis://HOST:PORT/DB, "
         "redis-cluster://HOST:PORT,HOST:PORT/ (Redis 7 Cluster, sharded pub/sub) or "
         "redis-sentinel://HOST:PORT,HOST:PORT/MASTER/DB (the master Sentinel names). "
         "Options as ?name=value, e.g. ?prefix=chat:."],
        ["max-message-size", None, str(_LIMITS.max_message_size), "Longest chat message in bytes."],
        ["allowed-origins", None, None,
         "Comma-separated Origin patterns that may open WebSockets besides the server's own "
         "origin and clients that send none (the default: only those): e.g. "
         "http://good.example (a default port may be left out), https://*.example.com, "
         "null (file:// pages), * (any origin)."],
        ["static", None, None, "A file (served at /) or folder with an index.html to replace the chat page."],
        ["rate", None, _g(_LIMITS.rate), "Messages a second per connection (0 = unlimited)."],
        ["ping-interval", None, _g(_SETTINGS.ping_interval), "Seconds between WebSocket pings (0 = never)."],
        ["echo-path", None, _SETTINGS.echo_path, "Path of the echo route ('' = off, like --no-echo)."],
        ["max-groups", None, str(_LIMITS.max_groups), "Groups one connection may be in at once."],
        ["max-connections-per-ip", None, str(_SETTINGS.max_connections_per_ip),
         "WebSocket connections per client address; more get HTTP 429 at the handshake."],
        ["max-connections-per-user", None, str(_SETTINGS.max_connections_per_user),
         "Chat connections per nickname on this node; more are closed with code 4029."],
        ["max-handshakes-per-ip", None, str(_SETTINGS.max_handshakes_per_ip),
         "HTTP connections per client address that are not WebSockets yet; more get 429."],
        ["handshake-timeout", None, _g(_SETTINGS.handshake_timeout),
         "Seconds a request (so a WebSocket handshake) may take to arrive; then 408."],
        ["idle-timeout", None, _g(_SETTINGS.idle_timeout),
         "Seconds an HTTP connection may stay silent before it is closed."],
        ["max-header-size", None, str(_SETTINGS.max_header_size),
         "Bytes of request line and headers per request; more get 431."],
        ["auth-secret", None, None, "Token mode: verify HS256 JWTs with the secret in this file."],
        ["auth-public-key", None, None, "Token mode: verify RS256/ES256 JWTs with this PEM public key."],
        ["auth-jwks", None, None, "Token mode: verify JWTs with the key their kid names in this JWKS file."],
        ["auth-audience", None, None, "Token mode: the aud every token must name."],
        ["auth-issuer", None, None, "Token mode: the iss every token must name."],
        ["auth-leeway", None, "30", "Token mode: seconds of clock skew allowed on exp/nbf."],
        ["history-size", None, str(_RETENTION.size), "Messages kept per group/user stream (0 = no history)."],
        ["history-age", None, _g(_RETENTION.age), "Seconds a stored message stays in history."],
        ["inbox-ttl", None, _g(_DURABILITY.inbox_ttl), "Seconds after a user's last connection that private messages to it are stored."],
        ["idempotency-window", None, _g(_DURABILITY.idempotency_window), "Seconds a retried send (same id) is acked, not redelivered."],
        ["history-page-max", None, str(_DURABILITY.history_page_max), "Most messages one history or resume page holds."],
        ["metrics", None, None,
         "Serve Prometheus metrics at /metrics: on a listening endpoint of its own that "
         "serves nothing else, e.g. tcp:9100:interface=127.0.0.1, or 'main' for the main "
         "port (public: anyone who can reach the chat can read them). Default: off."],
        ["gc-threshold", None, str(DEFAULT_THRESHOLD),
         "Allocations between the garbage collector's youngest collections (0 = Python's "
         "default, 700); start-up objects are frozen too (see improto.gctuning)."],
        ["workers", None, "1", "Worker processes sharing --port, e.g. one per core; more than 1 needs "
         "a redis:// backend and a tcp: port (see improto.workers)."],
    ]

    def parseOptions(self, options: list[str] | None = None) -> None:
        # Kept for --workers: each worker parses the same arguments.
        self.argv = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def postOptions(self) -> None:
        for name, parse in _NUMBERS.items():
            try:
                self[name] = parse(str(self[name]))
            except ValueError as e:
                reason = str(e) if "must" in str(e) else "must be a number"
                raise _fail(f"--{name} {reason} (got {self[name]!r})") from None
        try:
            # Parsing needs no reactor; this catches typos before start-up.
            serverFromString(None, self["port"])
        except Exception as e:
            raise _fail(f"bad --port {self['port']!r}: {e}") from None
        self["port"] = with_listen_backlog(self["port"])
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
        try:
            if self["metrics"] not in (None, "main"):
                serverFromString(None, self["metrics"])
        except Exception as e:
            raise _fail(f"bad --metrics {self['metrics']!r}: {e}") from None
        try:
            check_workers(self["workers"], scheme, self["port"], self["metrics"])
        except ValueError as e:
            raise _fail(str(e)) from None
        self["allowed-origins"] = _origins(self["allowed-origins"])
        self["echo-path"] = _echo_path(self["echo-path"], self["no-echo"])
        if self["static"] is not None:
            _check_static(self["static"])
        try:
            self["authenticator"] = authenticator_from_options(self)
        except ValueError as e:
            raise _fail(str(e)) from None


def _origins(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    origins = tuple(o.strip() for o in value.split(",") if o.strip())
    if not origins:
        raise _fail("--allowed-origins needs at least one pattern")
    return origins


def _echo_path(path: str, off: bool) -> str:
    if off or not path:
        return ""
    if not path.startswith("/") or path.count("/") != 1 or len(path) < 2:
        raise _fail(f"--echo-path must be one path segment like /echo (got {path!r})")
    return path


def _check_static(path: str) -> None:
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "index.html")):
            raise _fail(f"--static {path!r}: the folder has no index.html")
    elif not os.path.isfile(path):
        raise _fail(f"--static {path!r}: no such file or folder")
    elif not os.access(path, os.R_OK):
        raise _fail(f"--static {path!r}: not readable")


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    if options["workers"] > 1:
        from improto.workers import Supervisor

        return Supervisor(options.argv, options["workers"], options["port"], reactor)
    return build_service(options)


def build_service(options: Options, endpoint: Any = None, node_id: str | None = None) -> IService:
    """One node's service; a ``--workers`` worker passes its adopted socket and node id."""
    from twisted.internet import endpoints, reactor

    from improto.backends.url import backend_from_url
    from improto.metrics import MetricsResource, ServerMetrics, with_metrics
    from improto.router import Router
    from improto.service import ImprotoService
    from improto.web import root_resource
    from improto.web.origins import OriginPolicy
    from improto.web.site import GuardedSite

    settings = Settings(
        allowed_origins=options["allowed-origins"],
        ping_interval=options["ping-interval"],
        echo_path=options["echo-path"],
        max_connections_per_ip=options["max-connections-per-ip"],
        max_connections_per_user=options["max-connections-per-user"],
        max_handshakes_per_ip=options["max-handshakes-per-ip"],
        handshake_timeout=options["handshake-timeout"],
        idle_timeout=options["idle-timeout"],
        max_header_size=options["max-header-size"],
        authenticator=options["authenticator"],
    )
    announce(options["authenticator"])
    never = OriginPolicy(settings.allowed_origins).never_matching
    if never:
        _log.warn(
            "--allowed-origins: {patterns} can never match a browser's Origin "
            "(scheme://host[:port], no path or trailing slash)",
            patterns=", ".join(never),
        )
    limits = RouterLimits(
        max_message_size=options["max-message-size"],
        rate=options["rate"],
        burst=options["rate"] * 2,
        max_groups=options["max-groups"],
    )
    backend = backend_from_url(options["backend"], reactor, node_id=node_id)
    metrics = ServerMetrics() if options["metrics"] else None
    backend.retention = Retention(options["history-size"], options["history-age"])
    durability = Durability(
        options["history-page-max"], options["inbox-ttl"], options["idempotency-window"])
    router = Router(backend, limits=limits, clock=time.monotonic, durability=durability,
                    **({"metrics": metrics} if metrics else {}))
    on_main = MetricsResource(metrics) if metrics and options["metrics"] == "main" else None
    site = GuardedSite(root_resource(router, settings, reactor, options["static"], on_main), settings, reactor)
    if metrics is not None:
        metrics.watch(router)
        site.metrics = metrics
    endpoint = endpoint or endpoints.serverFromString(reactor, options["port"])
    reactor.callWhenRunning(gctuning.tune, options["gc-threshold"])
    server = ImprotoService(router, endpoint, site, settings, reactor, options["port"])
    return with_metrics(server, metrics, options["metrics"], reactor)
