"""
:class:`ServerMetrics`: the :class:`~improto.router.observer.Observer` that
counts with ``prometheus_client``, in a registry of its own.

Counters the hot path touches (messages in, deliveries, error frames) are
labelled children bound once, here, so an event costs one dict lookup and
one ``inc``. What is a state rather than an event (sessions per dialect,
the backend's state, channels held) is read from the router when scraped,
so it costs nothing between scrapes and can never drift.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from improto.backends.interface import BackendState
from improto.protocol.codec import ErrorCode

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from improto.router import Router

#: Kinds of ``improto_messages_in_total`` and ``improto_deliveries_total``.
KINDS = ("group", "private", "echo")
#: Reasons of ``improto_connections_refused_total`` (see docs/operations.md).
REFUSALS = (
    "origin", "per_ip", "per_ip_pending", "per_user", "bad_name", "auth",
    "handshake_timeout", "header_too_large",
)
#: Close codes exported (as 0) from the start; others appear when first sent.
CLOSE_CODES = (1000, 1001, 1002, 1007, 1008, 1009, 1011, 4029, 4401, 4403)
#: Seconds: a Redis PUBLISH on loopback takes ~0.1 ms, across a network ~1 ms.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5)


class ServerMetrics:
    """One server's metrics; :meth:`watch` ties it to the router it counts."""

    def __init__(self, registry: CollectorRegistry | None = None, process: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._open = Gauge("improto_connections_open", "WebSocket connections open now.",
                           registry=r)
        self._accepted = Counter("improto_connections_accepted",
                                 "WebSocket connections that became sessions.", registry=r)
        refused = Counter("improto_connections_refused", "Connections or handshakes refused.",
                          ["reason"], registry=r)
        messages = Counter("improto_messages_in", "Client messages accepted for delivery.",
                           ["kind"], registry=r)
        deliveries = Counter("improto_deliveries", "Frames handed to local connections.",
                             ["kind"], registry=r)
        errors = Counter("improto_error_frames", "Error frames sent to clients.", ["code"],
                         registry=r)
        self._closes = Counter("improto_close_codes_sent",
                               "WebSocket closes the server started, by close code.",
                               ["code"], registry=r)
        self._rate_limited = Counter("improto_rate_limited_frames",
                                     "Frames refused for the sender's rate limit.", registry=r)
        self._slow = Counter("improto_slow_consumers_dropped",
                             "Connections dropped because they stopped reading.", registry=r)
        self._latency = Histogram("improto_backend_publish_seconds",
                                  "Seconds from PUBLISH sent to its reply (Redis backend).",
                                  buckets=LATENCY_BUCKETS, registry=r)
        self._refused_counter = refused
        self._refused = _children(refused, "reason", REFUSALS)
        self._messages = _children(messages, "kind", KINDS)
        self._deliveries = _children(deliveries, "kind", KINDS)
        self._errors = _children(errors, "code", [c.value for c in ErrorCode])
        self._close_children: dict[int, Any] = {
            code: self._closes.labels(code=str(code)) for code in CLOSE_CODES}
        self._state = _RouterState()
        r.register(self._state)
        if process:
            ProcessCollector(registry=r)

    def watch(self, router: Router) -> None:
        """Read ``router``'s state at scrape time, and time its backend's publishes."""
        self._state.router = router
        backend = router.backend
        if hasattr(backend, "publish_observer"):
            backend.publish_observer = self.time_publish

    # -- the Observer interface ---------------------------------------------

    def message_in(self, kind: str) -> None:
        self._messages[kind].inc()

    def delivered(self, kind: str, count: int) -> None:
        if count:
            self._deliveries[kind].inc(count)

    def error_sent(self, code: str) -> None:
        child = self._errors.get(code)
        if child is not None:
            child.inc()

    def rate_limited(self) -> None:
        self._rate_limited.inc()

    def session_opened(self) -> None:
        self._accepted.inc()

    def refused(self, reason: str) -> None:
        child = self._refused.get(reason)
        if child is None:
            child = self._refused[reason] = self._refused_counter.labels(reason=reason)
        child.inc()

    def connection_opened(self) -> None:
        self._open.inc()

    def connection_closed(self) -> None:
        self._open.dec()

    def close_sent(self, code: int) -> None:
        child = self._close_children.get(code)
        if child is None:
            child = self._close_children[code] = self._closes.labels(code=str(code))
        child.inc()

    def slow_consumer_dropped(self) -> None:
        self._slow.inc()

    # -- the backend ----------------------------------------------------------

    def time_publish(self, d: Deferred[Any]) -> None:
        """Observe how long the PUBLISH behind ``d`` takes, success or failure."""
        started = time.perf_counter()
        observe = self._latency.observe

        def done(result: Any) -> Any:
            observe(time.perf_counter() - started)
            return result

        d.addBoth(done)


def _children(metric: Any, label: str, values: Any) -> dict[str, Any]:
    """Bind every known label value once, so each is exported (as 0) from the start."""
    return {value: metric.labels(**{label: value}) for value in values}


class _RouterState(Collector):
    """Gauges read from the router when scraped."""

    router: Router | None = None

    def collect(self) -> Iterator[Any]:
        router = self.router
        if router is None:
            return
        sessions = GaugeMetricFamily("improto_sessions", "Router sessions open now, by dialect.",
                                     labels=["dialect"])
        counts = dict.fromkeys(("native", "seed", "echo", "feed"), 0)
        for session in list(router.sessions.values()):
            dialect = ("echo" if session.echo else "feed" if session.listener
                       else "native" if session.native else "seed")
            counts[dialect] += 1
        for dialect, count in counts.items():
            sessions.add_metric([dialect], count)
        yield sessions
        backend = router.backend
        state = backend.health().state
        states = GaugeMetricFamily("improto_backend_state",
                                   "1 for the backend's current state, 0 for the others.",
                                   labels=["state"])
        for candidate in BackendState:
            states.add_metric([candidate.value], 1 if candidate is state else 0)
        yield states
        yield GaugeMetricFamily("improto_channels_held",
                                "Backend channels this node's router holds.",
                                value=router.channels_held)
        yield from _redis_state(backend)
        yield from _history_state(backend)


def _history_state(backend: Any) -> Iterator[Any]:
    """
    History and inbox sizes, where this process holds them (the in-memory
    backend). On Redis they live in Redis (keys ``<prefix>{<stream>}:log``
    and ``:seen``); counting them would mean a SCAN per scrape, so a Redis
    exporter is the place to watch them.
    """
    streams = getattr(getattr(backend, "hub", None), "streams", None)
    sizes = getattr(streams, "sizes", None)
    if sizes is None:
        return
    now = sizes()
    yield GaugeMetricFamily("improto_history_streams",
                            "Streams (groups and users) with history in this process.",
                            value=now["streams"])
    yield GaugeMetricFamily("improto_history_messages",
                            "Messages held in history, all streams together.",
                            value=now["messages"])
    yield GaugeMetricFamily("improto_inbox_users",
                            "Users whose inbox cursor is kept (seen within --inbox-ttl).",
                            value=now["inbox_users"])


def _redis_state(backend: Any) -> Iterator[Any]:
    """What only the Redis backend knows: its subscriptions and its reconnects."""
    stats = getattr(backend, "stats", None)
    subscribed = getattr(backend, "channels_subscribed", None)
    if stats is None or subscribed is None:
        return
    yield GaugeMetricFamily("improto_redis_channels_subscribed",
                            "Pub/sub channels subscribed on the Redis connection.",
                            value=subscribed)
    reconnects = CounterMetricFamily("improto_backend_reconnects",
                                     "Reconnect attempts of the backend's links.",
                                     labels=["link"])
    for link in ("commands", "subscriber"):
        link_stats = getattr(stats, link, None)
        reconnects.add_metric([link], getattr(link_stats, "reconnects", 0))
    yield reconnects
