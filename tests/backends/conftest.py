"""Fixtures of the backend tests: two-node clusters on either backend, Redis nodes, log capture."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.logger import globalLogPublisher

from improto.backends.interface import BackendState
from improto.backends.memory import MemoryBackend, MemoryHub
from tests.backends.support import settle


@attrs.define
class Cluster:
    """Two started nodes, and a way to make more of the same kind."""

    kind: str
    a: Any
    b: Any
    make: Callable[..., Any]

    async def settle(self, *nodes: Any) -> None:
        """Everything ``a`` published so far has reached ``nodes`` (default: both)."""
        await settle(self.a, *(nodes or (self.a, self.b)))


@pytest_twisted.async_yield_fixture(params=["memory", "redis", "redis-cluster"])
async def cluster(request: pytest.FixtureRequest):
    made: list[Any] = []
    if request.param == "memory":
        hub = MemoryHub()

        def make(node_id: str, **_: Any) -> Any:
            made.append(MemoryBackend(hub, node_id))
            return made[-1]

    elif request.param == "redis-cluster":
        from improto.backends.redis.cluster import ClusterBackend

        url = request.getfixturevalue("redis_cluster").url
        prefix = f"improto-test:{uuid.uuid4().hex[:10]}:"

        def make(node_id: str, **options: Any) -> Any:
            made.append(ClusterBackend.from_url(url, reactor=reactor, prefix=prefix, node_id=node_id, **options))
            return made[-1]

    else:
        from improto.backends.redis import RedisBackend

        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")

        def make(node_id: str, **options: Any) -> Any:
            made.append(RedisBackend.from_url(url, reactor=reactor, prefix=prefix, node_id=node_id, **options))
            return made[-1]

    a, b = make("node-a"), make("node-b")
    await a.start()
    await b.start()
    yield Cluster(request.param, a, b, make)
    for node in made:
        if node.health().state is not BackendState.STOPPED:
            await node.stop()


@pytest.fixture
def redis_nodes(redis_url: str, redis_prefix: str):
    """Make Redis nodes on ``redis_url`` (or ``url=``), all stopped after the test."""
    from improto.backends.redis import RedisBackend

    made: list[RedisBackend] = []

    def make(node_id: str, url: str = redis_url, **options: Any) -> RedisBackend:
        options.setdefault("reconnect_max_delay", 0.3)
        made.append(RedisBackend.from_url(url, reactor=reactor, prefix=redis_prefix, node_id=node_id, **options))
        return made[-1]

    yield make
    pending = [node.stop() for node in made if node.health().state is not BackendState.STOPPED]
    if pending:
        pytest_twisted.blockon(gatherResults(pending))


@pytest.fixture
def cluster_nodes():
    """Cluster backends made by a test, each stopped afterwards."""
    from improto.backends.redis.cluster import ClusterBackend

    made: list[Any] = []
    prefix = f"improto-test:{uuid.uuid4().hex[:10]}:"

    def make(url: str, node_id: str, **options: Any) -> Any:
        options.setdefault("reconnect_max_delay", 0.3)
        made.append(ClusterBackend.from_url(url, reactor=reactor, prefix=prefix, node_id=node_id, **options))
        return made[-1]

    yield make
    for node in made:
        if node.health().state is not BackendState.STOPPED:
            pytest_twisted.blockon(node.stop())


@pytest.fixture
def log_events():
    """Events logged by the Redis backend's modules."""
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").startswith("improto.backends.redis"):
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)
