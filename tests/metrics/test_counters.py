"""
:class:`ServerMetrics` in process: a real router on the in-memory backend,
counted into a registry of its own, read back through prometheus_client.
"""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from improto.metrics import ServerMetrics
from improto.router import Router
from improto.router.observer import NO_METRICS
from improto.testing import FakeClock, FakeLink, memory_backend


def counted_router() -> tuple[Router, ServerMetrics]:
    metrics = ServerMetrics(process=False)
    router = Router(memory_backend(), clock=FakeClock(), metrics=metrics)
    metrics.watch(router)
    return router, metrics


def sample(metrics: ServerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_a_router_counts_nothing_by_default() -> None:
    router = Router(memory_backend(), clock=FakeClock())
    assert router.metrics is NO_METRICS
    alice = router.connect(FakeLink(), "alice", native=False)
    router.receive_text(alice, "hi", 2)  # the no-op observer takes every call


def test_group_messages_in_and_deliveries_out() -> None:
    router, metrics = counted_router()
    links = [FakeLink() for _ in range(3)]
    sessions = [router.connect(link, name, native=False)
                for link, name in zip(links, ("alice", "bob", "carol"), strict=True)]
    for i in range(4):
        router.receive_text(sessions[0], f"m{i}", 2)
    assert sample(metrics, "improto_messages_in_total", kind="group") == 4
    assert sample(metrics, "improto_deliveries_total", kind="group") == 8  # bob and carol
    assert sample(metrics, "improto_connections_accepted_total") == 3
    assert sample(metrics, "improto_sessions", dialect="seed") == 3
    assert sample(metrics, "improto_channels_held") == 4  # three users and the lobby
    router.disconnect(sessions[2])
    assert sample(metrics, "improto_sessions", dialect="seed") == 2


def test_error_frames_are_counted_by_their_code() -> None:
    router, metrics = counted_router()
    link = FakeLink()
    session = router.connect(link, "dora", native=True)
    router.receive_text(session, json.dumps({"type": "nope", "id": "1"}), 30)
    router.receive_binary(session, b"\x00")
    assert sample(metrics, "improto_error_frames_total", code="unknown_type") == 1
    assert sample(metrics, "improto_error_frames_total", code="binary_not_supported") == 1
    assert [f.get("code") for f in link.json() if f["type"] == "error"] == [
        "unknown_type", "binary_not_supported"]


def test_each_server_has_its_own_registry() -> None:
    first, second = ServerMetrics(process=False), ServerMetrics(process=False)
    first.message_in("group")
    first.refused("origin")
    first.refused("something_new")
    first.close_sent(1008)
    assert second.registry.get_sample_value("improto_messages_in_total", {"kind": "group"}) == 0
    assert first.registry.get_sample_value("improto_messages_in_total", {"kind": "group"}) == 1
    assert first.registry.get_sample_value(
        "improto_connections_refused_total", {"reason": "something_new"}) == 1
    assert first.registry.get_sample_value("improto_close_codes_sent_total", {"code": "1008"}) == 1
    # The process's global registry got none of it.
    from prometheus_client import REGISTRY
    assert REGISTRY.get_sample_value("improto_messages_in_total", {"kind": "group"}) is None


def test_the_exposition_parses_and_declares_types() -> None:
    router, metrics = counted_router()
    router.connect(FakeLink(), "erin", native=True)
    text = generate_latest(metrics.registry).decode("utf-8")
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types["improto_messages_in"] == "counter"
    assert types["improto_connections_open"] == "gauge"
    assert types["improto_sessions"] == "gauge"
    assert types["improto_backend_publish_seconds"] == "histogram"
    assert types["improto_backend_state"] == "gauge"


def test_an_explicit_registry_is_used() -> None:
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry, process=False)
    metrics.rate_limited()
    assert registry.get_sample_value("improto_rate_limited_frames_total") == 1


def test_history_and_inbox_sizes_on_the_memory_backend() -> None:
    router, metrics = counted_router()
    alice = router.connect(FakeLink(), "alice", native=False)
    for i in range(3):
        router.receive_text(alice, f"m{i}", 2)
    assert sample(metrics, "improto_history_messages") == 3  # the lobby's
    assert sample(metrics, "improto_history_streams") == 1
    assert sample(metrics, "improto_inbox_users") == 0  # seed pages have no inbox
    carol = router.connect(FakeLink(), "carol", native=True)
    router.disconnect(carol)  # her inbox is kept for --inbox-ttl
    assert sample(metrics, "improto_inbox_users") == 1
