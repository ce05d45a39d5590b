"""
Soak: thousands of clients for minutes against ``twistd -n improto``, on
the memory backend and on two nodes sharing a private Redis.

Clients join and leave groups, chat in groups and privately, ask ``who``
and reconnect (see :mod:`tests.soak.load`). The test asserts that every
native request got exactly one answer, that nothing was delivered twice,
to the wrong connection, or after being refused, that the observers got
exactly what was acked for them, that the servers' RSS is flat once warm,
and that nothing is left on the servers or in Redis once everyone left.

``tox -e soak`` runs it; size it with ``SOAK_CONNECTIONS`` (2000),
``SOAK_SECONDS`` (180), ``SOAK_WORKERS`` (2 load processes),
``SOAK_THINK`` (mean seconds between a client's actions, 5),
``SOAK_LIFETIME`` (mean seconds a connection lives, 90),
``SOAK_DEFLATE_EVERY`` (every n-th client offers permessage-deflate, 3;
0: none) and
``SOAK_SAMPLE_SECONDS`` (10, between RSS samples). The normal suite runs
only :func:`test_soak_smoke`, a few seconds of the same code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import redis

from tests.serverproc import ServerProcess, start_server
from tests.soak.harness import (
    SoakResult,
    counts_left,
    enough_file_descriptors,
    health,
    log,
    observer_mismatches,
    open_files_limit,
    poll,
    presence_left,
    rss_growth,
    run_soak,
    server_args,
    summary,
    violations,
)
from tests.soak.load import LoadConfig

NATIVE_KINDS = ("send", "private", "join", "leave", "who")


def env_number(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def load_config(nodes: list[ServerProcess], connections: int, seconds: float, **overrides: float) -> LoadConfig:
    return LoadConfig(
        urls=tuple(n.ws for n in nodes),
        connections=connections,
        seconds=seconds,
        groups=max(5, connections // 10),
        observers=max(2, connections // 50),
        seed_clients=max(2, connections // 50),
        lobby_stayers=max(1, connections // 200),
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture
def nodes_for(request: pytest.FixtureRequest) -> Iterator[object]:
    """``nodes_for(connections, backend_url, count)``: improto servers, stopped afterwards."""
    started: list[ServerProcess] = []

    def start(connections: int, backend: str = "memory://", count: int = 1) -> list[ServerProcess]:
        args = server_args(connections)
        for _ in range(count):
            started.append(start_server(*args, "--backend", backend))
        for node in started:
            # The server inherited this process's raised limit.
            assert open_files_limit(node.process.pid) >= connections + 256
        return started

    yield start
    for node in started:
        node.stop()


def assert_soak_held(result: SoakResult, nodes: list[ServerProcess], cfg: LoadConfig) -> None:
    """Everything but the RSS: the accounting, the deliveries, the state left."""
    stats = result.stats
    counts = stats.counts
    log(f"counts:\n{summary(result)}")
    assert not violations(stats), f"{dict(violations(stats))}\nexamples: {stats.examples}"
    for kind in NATIVE_KINDS:
        answered = sum(v for k, v in counts.items() if k.startswith(f"answer.{kind}."))
        assert counts[f"sent.{kind}"] == answered, f"{kind}: {counts[f'sent.{kind}']} sent, {answered} answered"
    assert not stats.refused & stats.delivered, "a refused message was delivered"
    assert stats.delivered <= stats.sent, "a message nobody sent was delivered"
    assert not observer_mismatches(result), observer_mismatches(result)
    # The load really happened: every kind of traffic, reconnects, refusals.
    for key in ("answer.send.ack", "answer.private.ack", "answer.private.unknown_user",
                "answer.join.ack", "answer.leave.ack", "answer.who.who", "reconnects",
                "recv.message", "recv.private", "recv.presence", "sent.seed_group"):
        assert counts[key] > 0, f"no {key}: the load was too small to mean anything"

    # Everyone has left: nothing may remain on any node.
    poll("router state after everyone left", counts_left(nodes))
    names = sorted(stats.names)
    probes = names[:: max(1, len(names) // 30)]
    assert presence_left(nodes[-1], stats.groups, probes) == []
    poll("router state after the presence probes", counts_left(nodes))


def test_soak_smoke(nodes_for) -> None:
    """A few seconds of the soak on the memory backend, so its code cannot rot."""
    with enough_file_descriptors(1024):
        nodes = nodes_for(60)
        cfg = load_config(nodes, 50, 3.0, workers=1, think=0.3, lifetime=1.5)
        result = run_soak(cfg, nodes, "smoke", interval=1.0)
        assert_soak_held(result, nodes, cfg)


def soak_size() -> tuple[int, float, dict[str, float]]:
    connections = int(env_number("SOAK_CONNECTIONS", 2000))
    seconds = env_number("SOAK_SECONDS", 180)
    overrides = {
        "workers": int(env_number("SOAK_WORKERS", 2)),
        "think": env_number("SOAK_THINK", 5),
        "lifetime": env_number("SOAK_LIFETIME", 90),
        "deflate_every": int(env_number("SOAK_DEFLATE_EVERY", 3)),
    }
    return connections, seconds, overrides


def log_rss(result: SoakResult, nodes: list[ServerProcess]) -> None:
    for i, _ in enumerate(nodes):
        series = result.sampler.load_series(i)
        log(f"node{i} RSS during the load (MiB): {' '.join(f'{r:.1f}' for r in series)}")


def assert_rss_flat(result: SoakResult, nodes: list[ServerProcess]) -> None:
    """
    Flat once warm: the median RSS of the load's last third is at most 10 %
    + 4 MiB over that of its second third (the first third is warm-up:
    pymalloc arenas, zlib contexts and socket buffers growing to the
    working set). Medians shrug off a single sample taken at a burst of
    buffered frames; the slack covers allocator fragmentation, which moves
    RSS by a few MiB either way at a steady load. A leak of 1 KiB per
    connection or 100 bytes per message exceeds it within a few minutes.
    """
    for i, _ in enumerate(nodes):
        series = result.sampler.load_series(i)
        assert len(series) >= 6, f"only {len(series)} RSS samples: run longer (SOAK_SECONDS)"
        second, last = rss_growth(series)
        log(f"node{i} RSS median of the second third {second:.1f} MiB, of the last {last:.1f} MiB")
        assert last <= second * 1.10 + 4, f"node{i} RSS grew from {second:.1f} to {last:.1f} MiB"


def run_full(nodes: list[ServerProcess], label: str) -> None:
    connections, seconds, overrides = soak_size()
    cfg = load_config(nodes, connections, seconds, **overrides)
    result = run_soak(cfg, nodes, label, interval=env_number("SOAK_SAMPLE_SECONDS", 10))
    log_rss(result, nodes)
    assert_soak_held(result, nodes, cfg)
    assert_rss_flat(result, nodes)


@pytest.mark.soak
def test_soak_memory(nodes_for) -> None:
    connections, _, _ = soak_size()
    with enough_file_descriptors(connections + 1024):
        run_full(nodes_for(connections), "memory")


@pytest.mark.soak
def test_soak_redis_two_nodes(nodes_for, redis_url: str, redis_prefix: str) -> None:
    connections, _, _ = soak_size()
    backend = f"{redis_url}?prefix={quote(redis_prefix, safe=':')}"
    with enough_file_descriptors(connections + 1024):
        nodes = nodes_for(connections, backend, count=2)
        run_full(nodes, "redis")
        client = redis.Redis.from_url(redis_url, socket_timeout=10)
        try:
            # Nothing of the sessions is left in Redis: no subscription and no
            # presence, only each live node's heartbeat and the history that
            # durability keeps on purpose (streams, idempotency keys, inbox cursors).
            assert client.pubsub_channels(f"{redis_prefix}*") == []
            heartbeats = {f"{redis_prefix}node:{health(n)['node']}".encode() for n in nodes}
            left = set(client.scan_iter(match=f"{redis_prefix}*", count=1000)) - heartbeats
            not_history = sorted(k for k in left if not _is_history_key(k))
            assert not_history == [], not_history[:10]
        finally:
            client.close()


def _is_history_key(key: bytes) -> bool:
    """A key of :mod:`improto.backends.redis.streams` (``P{<stream>}:seq`` and so on)."""
    return b"}:" in key and (key.endswith((b"}:seq", b"}:log", b"}:seen")) or b"}:idem:" in key)
