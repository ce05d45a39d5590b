"""
History on the Redis Cluster backend, beyond the shared contract
(test_contract_streams.py): each stream's script runs on the master of
the stream's slot and publishes on the sharded channel of the same slot,
survives a flushed script cache (NOSCRIPT) and follows a moved slot
(MOVED).
"""

from __future__ import annotations

import collections
import uuid

import pytest
import pytest_twisted

from improto.backends.redis.cluster import ClusterBackend
from improto.backends.redis.sharded import channel_key
from improto.backends.redis.slots import key_slot
from tests.backends.support import Inbox, envelope, eventually


def test_a_stream_and_its_channel_share_a_slot() -> None:
    prefix = b"improto:"
    for name in ("group:lobby", "user:alice", "group:{odd}", "group:}x{"):
        assert key_slot(channel_key(prefix, name)) == key_slot(
            ClusterBackend.from_url("redis-cluster://127.0.0.1:1/", prefix="improto:").streams.key(name, "seq"))


@pytest_twisted.ensureDeferred
async def test_streams_live_on_the_master_of_their_slot(redis_cluster, cluster_nodes) -> None:
    a, b = cluster_nodes(redis_cluster.url, "node-a"), cluster_nodes(redis_cluster.url, "node-b")
    await a.start()
    await b.start()
    streams = [f"group:h{i}" for i in range(30)]
    inbox = Inbox()
    for stream in streams:
        await b.subscribe(stream, inbox)
    results = [await a.append(stream, stream, envelope(stream.encode())) for stream in streams]
    assert [(r.seq, r.receivers) for r in results] == [(1, 1)] * 30
    got = await inbox.wait_for(30)
    assert sorted((e.stream, e.seq, e.data) for e in got) == sorted((s, 1, s.encode()) for s in streams)
    per_master = collections.Counter(a.owner_of(a.streams.key(s, "seq")) for s in streams)
    assert len(per_master) == 3, per_master
    for stream in streams:
        port = redis_cluster.owner_of_slot(key_slot(a.streams.key(stream, "seq")))
        client = redis_cluster.client(port)
        assert client.get(a.streams.key(stream, "seq")) == b"1"
        assert client.xlen(a.streams.key(stream, "log")) == 1
    page = await b.history(streams[7], 0, 10)
    assert [(e.seq, e.data) for e in page.messages] == [(1, streams[7].encode())]


@pytest_twisted.ensureDeferred
async def test_append_survives_a_flushed_script_cache(redis_cluster, cluster_nodes) -> None:
    a = cluster_nodes(redis_cluster.url, "node-a")
    await a.start()
    for port in redis_cluster.masters():
        redis_cluster.client(port).script_flush()
    stream = f"group:flushed-{uuid.uuid4().hex[:6]}"
    assert (await a.append(stream, stream, envelope(b"x"))).seq == 1
    assert [e.data for e in (await a.history(stream, 0, 10)).messages] == [b"x"]
    await a.mark_seen("carol", 4, 60)
    assert await a.last_seen("carol") == 4


@pytest_twisted.ensureDeferred
async def test_append_follows_a_moved_slot(redis_cluster, cluster_nodes) -> None:
    """A stale slot map meets MOVED on the append script; the subscriber resubscribes there."""
    a = cluster_nodes(redis_cluster.url, "node-a", heartbeat_interval=60, heartbeat_ttl=120)
    b = cluster_nodes(redis_cluster.url, "node-b")
    await a.start()
    await b.start()
    stream = f"group:mover-{uuid.uuid4().hex[:6]}"
    slot = key_slot(a.streams.key(stream, "seq"))
    inbox = Inbox()
    await b.subscribe(stream, inbox)
    source = redis_cluster.owner_of_slot(slot)
    target = next(p for p in redis_cluster.masters() if p != source)
    target_id = redis_cluster.client(target).execute_command("CLUSTER", "MYID")
    for port in [target, source, *(p for p in redis_cluster.masters() if p not in (source, target))]:
        redis_cluster.client(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    await eventually(lambda: b.subs.placed.get(stream) is b.shards[("127.0.0.1", target)].subscriber.ready)
    assert a.owner_of(a.streams.key(stream, "seq")) == ("127.0.0.1", source)  # stale until MOVED
    appended = await a.append(stream, stream, envelope(b"moved"))
    assert (appended.seq, appended.receivers) == (1, 1)
    assert [(e.seq, e.data) for e in await inbox.wait_for(1)] == [(1, b"moved")]
    assert a.owner_of(a.streams.key(stream, "seq")) == ("127.0.0.1", target)
    assert redis_cluster.client(target).get(a.streams.key(stream, "seq")) == b"1"


@pytest_twisted.ensureDeferred
async def test_a_channel_outside_the_streams_slot_is_refused(redis_cluster, cluster_nodes) -> None:
    a = cluster_nodes(redis_cluster.url, "node-a")
    await a.start()
    with pytest.raises(ValueError):
        await a.append("group:one", "group:two", envelope())
