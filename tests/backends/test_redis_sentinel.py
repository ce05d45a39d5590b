"""
The Redis Sentinel backend against a private master, replica and three
sentinels (``tests/redis_cluster_fixture.py``): it finds the master
through Sentinel, behaves like the standalone backend there, and follows
a failover (the master SIGKILLed; Sentinel promotes the replica).
"""

from __future__ import annotations

import collections
import uuid

import pytest
import pytest_twisted
from twisted.internet import reactor

from improto.backends.interface import BackendState, BackendUnavailable
from improto.backends.redis.options import configure_sentinel
from improto.backends.redis.sentinel import SentinelBackend
from improto.backends.url import check_backend_url
from tests.backends.support import Inbox, envelope, eventually, sleep


def test_sentinel_url_forms() -> None:
    sentinels, name, address, options = configure_sentinel(
        "redis-sentinel://:pw@127.0.0.1:26379,127.0.0.1:26380/mymaster/2?prefix=p:"
    )
    assert sentinels == [("127.0.0.1", 26379), ("127.0.0.1", 26380)]
    assert (name, address.db, address.password, options.prefix) == ("mymaster", 2, "pw", "p:")
    assert configure_sentinel("redis-sentinel://h/m")[1:3] == ("m", configure_sentinel("redis-sentinel://h/m")[2])
    for bad, why in [
        ("redis-sentinel://h:1/", "MASTERNAME"),
        ("redis-sentinel://h:1/m/x", "database"),
        ("redis-sentinel://h:1/m/1/2", "MASTERNAME"),
    ]:
        with pytest.raises(ValueError, match=why):
            configure_sentinel(bad)
    assert check_backend_url("redis-sentinel://h:1/m/0") == "redis-sentinel"
    assert check_backend_url("redis-cluster://h:1,h:2/") == "redis-cluster"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill", "sentinel-failover"])
@pytest_twisted.ensureDeferred
async def test_follows_a_failover(redis_sentinel, how: str) -> None:
    """
    ``kill``: SIGKILL the master, Sentinel promotes the replica. ``sentinel-failover``:
    ``SENTINEL FAILOVER`` while the master is alive; it is demoted to a replica.
    """
    servers = redis_sentinel
    prefix = f"improto-test:{uuid.uuid4().hex[:10]}:"
    nodes = [
        SentinelBackend.from_url(
            servers.url, reactor=reactor, prefix=prefix, node_id=f"node-{n}",
            reconnect_max_delay=0.3, command_timeout=1, heartbeat_interval=0.5, heartbeat_ttl=3,
        )
        for n in "ab"
    ]
    a, b = nodes
    try:
        await a.start()
        await b.start()
        assert f"127.0.0.1:{servers.master}" in a.health().detail, a.health().detail
        inbox = Inbox()
        await b.subscribe("user:bob", inbox)
        await a.presence_add("online", "alice")
        assert await a.publish("user:bob", envelope(b"before")) == 1
        await inbox.wait_for(1)

        old = servers.master
        if how == "kill":
            servers.kill(old)
        else:
            servers.client(servers.sentinels[0]).execute_command("SENTINEL", "FAILOVER", servers.name)
        outcomes: collections.Counter[str] = collections.Counter()
        start = reactor.seconds()
        resumed = None
        while reactor.seconds() - start < 30:
            try:
                count = await a.publish("user:bob", envelope(b"during"))
                outcomes[f"acked-{count}"] += 1
                if count == 1 and servers.current_master() != old:
                    resumed = reactor.seconds() - start
                    break
            except BackendUnavailable:
                outcomes["errored"] += 1
            await sleep(0.05)
        print(f"\nsentinel failover: {dict(outcomes)}; delivery resumed {resumed}s after the kill")
        assert resumed is not None, (outcomes, a.health().detail)
        if how == "kill":
            assert outcomes["errored"] > 0
        assert servers.current_master() == servers.replica
        # A demoted master still answers PUBLISH (to its own subscribers):
        # the nodes must leave it for the master Sentinel names.
        for node in nodes:
            await eventually(
                lambda n=node: n.health().ok and f"127.0.0.1:{servers.replica}" in n.health().detail, timeout=10
            )
        # The node re-registered its presence on the new master and still delivers.
        assert await b.presence_members("online") == ["alice"]
        assert await a.publish("user:bob", envelope(b"after")) == 1
        await eventually(lambda: inbox.items[-1].data == b"after")
    finally:
        for node in nodes:
            if node.health().state is not BackendState.STOPPED:
                await node.stop()
