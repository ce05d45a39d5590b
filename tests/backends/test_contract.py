"""
The IBackend contract, checked on every backend with the same tests.

Two nodes of one cluster are two MemoryBackend objects on one MemoryHub,
or two RedisBackend objects on the private test Redis (the ``cluster``
fixture, in ``conftest.py``). Nothing here may depend on what the
contract leaves open: whether a callback runs before or after the
``publish`` Deferred fires. Redis-only behaviour is in ``test_redis*.py``.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults
from zope.interface.verify import verifyObject

from improto.backends.interface import (
    Audience,
    BackendState,
    BackendUnavailable,
    Envelope,
    IAnnouncingPresence,
    IBackend,
)
from tests.backends.conftest import Cluster
from tests.backends.support import Inbox, envelope, settle

# -- the contract, for every backend --------------------------------------


@pytest_twisted.ensureDeferred
async def test_provides_interface(cluster: Cluster) -> None:
    assert verifyObject(IBackend, cluster.a)
    assert cluster.a.node_id != cluster.b.node_id


@pytest_twisted.ensureDeferred
async def test_publish_counts_receiving_nodes(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    assert await a.publish("group:lobby", envelope()) == 0
    await a.subscribe("group:lobby", Inbox())
    assert await b.publish("group:lobby", envelope()) == 1
    await b.subscribe("group:lobby", Inbox())
    assert await b.publish("group:lobby", envelope()) == 2
    assert await b.publish("group:other", envelope()) == 0


@pytest_twisted.ensureDeferred
async def test_own_publish_is_received(cluster: Cluster) -> None:
    inbox = Inbox()
    await cluster.a.subscribe("user:alice", inbox)
    sent = envelope(b"to myself")
    assert await cluster.a.publish("user:alice", sent) == 1
    assert await inbox.wait_for(1) == [sent]


@pytest_twisted.ensureDeferred
async def test_every_envelope_field_survives(cluster: Cluster) -> None:
    inbox = Inbox()
    await cluster.b.subscribe("group:lobby", inbox)
    sent = [
        Envelope("node-a", "sess-\u00e9\u4e2d", bytes(range(256)) * 3, True, Audience.NATIVE, "sess-x"),
        Envelope("node-a", "s2", b"", False, Audience.ALL, ""),
        Envelope("node-a", "", b"\r\n*1\r\n$3\r\nbad\r\n", False, Audience.ALL, None),
        Envelope("node-a", "s3", "caf\u00e9 \U0001f600".encode(), False, Audience.ALL, "s3"),
    ]
    for env in sent:
        await cluster.a.publish("group:lobby", env)
    assert await inbox.wait_for(len(sent)) == sent


@pytest_twisted.ensureDeferred
async def test_envelopes_arrive_in_publish_order(cluster: Cluster) -> None:
    inbox = Inbox()
    await cluster.b.subscribe("group:lobby", inbox)
    sent = [envelope(str(i).encode()) for i in range(50)]
    await gatherResults([cluster.a.publish("group:lobby", env) for env in sent])
    assert await inbox.wait_for(50) == sent


@pytest_twisted.ensureDeferred
async def test_unsubscribe_stops_delivery(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    inbox_a, inbox_b = Inbox(), Inbox()
    await a.subscribe("group:lobby", inbox_a)
    await b.subscribe("group:lobby", inbox_b)
    await b.unsubscribe("group:lobby")
    assert await a.publish("group:lobby", envelope()) == 1
    await cluster.settle()
    assert len(inbox_a.items) == 1
    assert inbox_b.items == []
    await b.unsubscribe("never:subscribed")


@pytest_twisted.ensureDeferred
async def test_subscribing_again_replaces_the_callback(cluster: Cluster) -> None:
    first, second = Inbox(), Inbox()
    await cluster.b.subscribe("group:lobby", first)
    await cluster.b.subscribe("group:lobby", second)
    assert await cluster.a.publish("group:lobby", envelope()) == 1
    await second.wait_for(1)
    await cluster.settle(cluster.b)
    assert first.items == []


@pytest_twisted.ensureDeferred
async def test_presence_add_and_remove_across_nodes(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    assert await a.presence_add("online", "alice") is True
    assert await b.presence_add("online", "alice") is False
    assert await a.presence_add("online", "alice") is False
    assert await a.presence_remove("online", "alice") is False
    assert await b.presence_remove("online", "alice") is True
    assert await b.presence_remove("online", "alice") is False
    assert await a.presence_remove("online", "nobody") is False
    assert await b.presence_add("online", "alice") is True


@pytest_twisted.ensureDeferred
async def test_presence_is_announced_in_the_same_call_only_when_it_changes(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    if cluster.kind == "redis-cluster":
        # The presence hash and the channel are in different slots: the
        # router makes the two calls in turn there.
        assert not IAnnouncingPresence.providedBy(a)
        return
    assert verifyObject(IAnnouncingPresence, a)
    inbox = Inbox()
    await b.subscribe("group:lobby", inbox)
    online, offline = envelope(b"online"), envelope(b"offline")
    assert await a.presence_add_announcing("online", "alice", "group:lobby", online) is True
    assert await b.presence_add_announcing("online", "alice", "group:lobby", envelope(b"no")) is False
    assert await a.presence_remove_announcing("online", "alice", "group:lobby", envelope(b"no")) is False
    assert await b.presence_remove_announcing("online", "alice", "group:lobby", offline) is True
    assert await a.presence_remove_announcing("online", "nobody", "group:lobby", envelope(b"no")) is False
    await settle(a, b)
    await settle(b, b)
    assert sorted(e.data for e in inbox.items) == [b"offline", b"online"]
    assert await a.presence_members("online") == []


@pytest_twisted.ensureDeferred
async def test_presence_members_is_a_sorted_union(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    for node, member in [(a, "carol"), (a, "alice"), (b, "bob"), (b, "alice"), (b, "\u00e9mile")]:
        await node.presence_add("group:lobby", member)
    await a.presence_add("group:other", "dave")
    expected = ["alice", "bob", "carol", "\u00e9mile"]
    assert await a.presence_members("group:lobby") == expected
    assert await b.presence_members("group:lobby") == expected
    assert await a.presence_members("group:other") == ["dave"]
    assert await a.presence_members("group:empty") == []
    await a.presence_remove("group:lobby", "alice")
    assert await b.presence_members("group:lobby") == expected
    await b.presence_remove("group:lobby", "alice")
    assert await b.presence_members("group:lobby") == ["bob", "carol", "\u00e9mile"]


@pytest_twisted.ensureDeferred
async def test_stop_removes_the_node_presence(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    await a.presence_add("online", "alice")
    await b.presence_add("online", "alice")
    await b.presence_add("online", "bob")
    await b.presence_add("group:lobby", "bob")
    await b.stop()
    assert await a.presence_members("online") == ["alice"]
    assert await a.presence_members("group:lobby") == []
    assert await a.presence_remove("online", "alice") is True


@pytest_twisted.ensureDeferred
async def test_health_follows_the_life_cycle(cluster: Cluster) -> None:
    node = cluster.make("node-c")
    assert node.health().state is BackendState.STARTING
    assert not node.health().ok
    await node.start()
    assert node.health().ok
    assert node.health().state is BackendState.OK
    await node.stop()
    assert node.health().state is BackendState.STOPPED
    await node.stop()


@pytest_twisted.ensureDeferred
async def test_a_stopped_node_refuses_work(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    inbox = Inbox()
    await a.subscribe("group:lobby", inbox)
    await a.presence_add("online", "alice")
    await a.stop()
    for call in (
        lambda: a.publish("group:lobby", envelope()),
        lambda: a.subscribe("group:other", Inbox()),
        lambda: a.presence_add("online", "bob"),
        lambda: a.presence_remove("online", "alice"),
        lambda: a.presence_members("online"),
    ):
        with pytest.raises(BackendUnavailable):
            await call()
    await a.unsubscribe("group:lobby")
    assert a.health().state is BackendState.STOPPED
    # Its subscriptions and presence went with it.
    assert await b.publish("group:lobby", envelope()) == 0
    assert await b.publish("group:other", envelope()) == 0
    assert await b.presence_members("online") == []
    assert inbox.items == []


@pytest_twisted.ensureDeferred
async def test_delivery_needs_no_particular_order_with_the_publish_ack(cluster: Cluster) -> None:
    """
    A callback that publishes again (the router does, for echoes) works
    whether it runs inside ``publish`` or after its Deferred fired.
    """
    a, b = cluster.a, cluster.b
    replies = Inbox()
    await a.subscribe("user:alice", replies)

    def echo(env: Envelope) -> None:
        b.publish("user:alice", envelope(b"re: " + env.data, origin_node="node-b"))

    await b.subscribe("user:bob", echo)
    counts = await gatherResults([a.publish("user:bob", envelope(str(i).encode())) for i in range(5)])
    assert counts == [1] * 5
    assert [e.data for e in await replies.wait_for(5)] == [f"re: {i}".encode() for i in range(5)]
