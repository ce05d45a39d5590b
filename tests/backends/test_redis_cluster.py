"""
The Redis Cluster backend against a private cluster of 3 masters + 3
replicas (``tests/redis_cluster_fixture.py``): what the shared contract
suite cannot show — channels spread over shards, a slot that moves
(server-sent ``sunsubscribe``, ``MOVED``), a master killed and its replica
taking over.
"""

from __future__ import annotations

import collections
import uuid

import pytest
import pytest_twisted
import redis
from twisted.internet import reactor

from improto.backends.interface import BackendUnavailable
from improto.backends.redis.options import configure_cluster
from improto.backends.redis.sharded import channel_key
from improto.backends.redis.slots import SlotMap, crc16, key_slot
from tests.backends.support import Inbox, envelope, eventually, sleep


def test_key_slots_match_redis() -> None:
    assert crc16(b"123456789") == 0x31C3
    assert key_slot(b"foo") == 12182
    assert key_slot(b"{user1000}.following") == key_slot(b"{user1000}.followers") == key_slot(b"user1000")
    assert key_slot(b"foo{}{bar}") == key_slot(b"foo{}{bar}")
    assert key_slot(b"{}x") == crc16(b"{}x") % 16384


def test_slot_map_parses_cluster_slots() -> None:
    slots = SlotMap.from_cluster_slots(
        [[0, 9, [b"", 7000, b"id1"], [b"127.0.0.1", 7003, b"id4"]], [10, 16383, [b"10.0.0.2", 7001, b"id2"]]],
        "127.0.0.1",
    )
    assert slots.owner(5) == ("127.0.0.1", 7000)
    assert slots.owner(16383) == ("10.0.0.2", 7001)
    assert slots.covered
    assert slots.ranges(("127.0.0.1", 7000)) == "0-9"


def test_cluster_url_forms() -> None:
    seeds, address, options = configure_cluster(
        "redis-cluster://u:p%40ss@127.0.0.1:7000,[::1]:7001,host/?prefix=x:&heartbeat_interval=1"
    )
    assert seeds == [("127.0.0.1", 7000), ("::1", 7001), ("host", 6379)]
    assert (address.username, address.password) == ("u", "p@ss")
    assert options.prefix == "x:" and options.heartbeat_interval == 1
    for bad, why in [
        ("redis-cluster://h:1/3", "only database 0"),
        ("redis-cluster://h:99999/", "port"),
        ("redis-cluster://h:1/?nope=1", "unknown option"),
        ("redis-cluster://u:secret@h:x/", r"is not host\[:port\]"),
    ]:
        with pytest.raises(ValueError, match=why) as info:
            configure_cluster(bad)
        assert "secret" not in str(info.value)


@pytest_twisted.ensureDeferred
async def test_channels_spread_over_every_shard(redis_cluster, cluster_nodes) -> None:
    a = cluster_nodes(redis_cluster.url, "node-a")
    b = cluster_nodes(redis_cluster.url, "node-b")
    await a.start()
    await b.start()
    inbox = Inbox()
    channels = [f"group:g{i}" for i in range(30)]
    for channel in channels:
        await b.subscribe(channel, inbox)
    counts = [await a.publish(channel, envelope(channel.encode())) for channel in channels]
    assert counts == [1] * 30
    assert sorted(e.data for e in await inbox.wait_for(30)) == sorted(c.encode() for c in channels)
    per_master = collections.Counter(a.owner_of(channel_key(a.prefix, c)) for c in channels)
    assert len(per_master) == 3, per_master
    for (_host, port), expected in per_master.items():
        client = redis_cluster.client(port)
        subscribed = client.execute_command("PUBSUB", "SHARDCHANNELS", a.prefix.decode() + "*")
        assert len(subscribed) == expected
    detail = a.health().detail
    assert a.health().ok and detail.count(" ok") == 3, detail


@pytest_twisted.ensureDeferred
async def test_a_moved_slot_is_resubscribed_and_publishes_follow_moved(redis_cluster, cluster_nodes) -> None:
    """
    Move an empty slot to another master (CLUSTER SETSLOT ... NODE): the
    old master pushes ``sunsubscribe``, the subscriber re-reads the slot
    map and resubscribes on the new owner; the publisher, whose map is
    stale, gets ``MOVED`` and follows it.
    """
    a = cluster_nodes(redis_cluster.url, "node-a", heartbeat_interval=60, heartbeat_ttl=120)
    b = cluster_nodes(redis_cluster.url, "node-b")
    await a.start()
    await b.start()
    channel = f"user:mover-{uuid.uuid4().hex[:6]}"
    slot = key_slot(channel_key(b.prefix, channel))
    inbox = Inbox()
    await b.subscribe(channel, inbox)
    assert await a.publish(channel, envelope(b"before")) == 1
    source = redis_cluster.owner_of_slot(slot)
    target = next(p for p in redis_cluster.masters() if p != source)
    target_id = redis_cluster.client(target).execute_command("CLUSTER", "MYID")
    for port in [target, source, *(p for p in redis_cluster.masters() if p not in (source, target))]:
        redis_cluster.client(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    await eventually(lambda: b.owner_of(channel_key(b.prefix, channel)) == ("127.0.0.1", target))
    await eventually(lambda: b.subs.placed.get(channel) is b.shards[("127.0.0.1", target)].subscriber.ready)
    assert a.owner_of(channel_key(a.prefix, channel)) == ("127.0.0.1", source)  # stale until MOVED
    assert await a.publish(channel, envelope(b"after")) == 1
    assert [e.data for e in await inbox.wait_for(2)] == [b"before", b"after"]
    assert a.owner_of(channel_key(a.prefix, channel)) == ("127.0.0.1", target)


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_killed_master_fails_over_and_delivery_resumes(fresh_redis_cluster, cluster_nodes) -> None:
    """
    SIGKILL one master under steady traffic to channels on every shard:
    publishes to its slots fail with BackendUnavailable (never hang, never
    pretend), the other shards keep delivering, and once its replica is
    promoted the node resubscribes there and delivery resumes. Every
    publish is acked or errored; counts are printed.
    """
    servers = fresh_redis_cluster
    a = cluster_nodes(servers.url, "node-a", command_timeout=1)
    b = cluster_nodes(servers.url, "node-b", command_timeout=1)
    await a.start()
    await b.start()
    channels: dict[tuple[str, int], str] = {}
    i = 0
    while len(channels) < 3:
        channel = f"group:fo{i}"
        channels.setdefault(a.owner_of(channel_key(a.prefix, channel)), channel)  # type: ignore[arg-type]
        i += 1
    inboxes = {c: Inbox() for c in channels.values()}
    for channel, inbox in inboxes.items():
        await b.subscribe(channel, inbox)
    victim_address, victim_channel = next(iter(channels.items()))
    outcomes: collections.Counter[str] = collections.Counter()
    by_shard: dict[str, collections.Counter[str]] = {c: collections.Counter() for c in channels.values()}
    seq = 0

    async def round_of_publishes() -> None:
        nonlocal seq
        for channel in inboxes:
            seq += 1
            try:
                count = await a.publish(channel, envelope(str(seq).encode()))
                outcome = "acked" if count == 1 else f"acked-{count}"
            except BackendUnavailable:
                outcome = "errored"
            outcomes[outcome] += 1
            by_shard[channel][outcome] += 1

    for _ in range(5):
        await round_of_publishes()
    servers.kill(victim_address[1])
    await eventually(lambda: not a.health().ok, timeout=5)
    assert "lost" in a.health().detail or "cannot reach" in a.health().detail, a.health().detail
    down_at = reactor.seconds()
    resumed_at = None
    while reactor.seconds() - down_at < 20:
        before = by_shard[victim_channel]["acked"]
        await round_of_publishes()
        if by_shard[victim_channel]["acked"] > before and a.health().ok and b.health().ok:
            resumed_at = reactor.seconds()
            break
        await sleep(0.05)
    assert resumed_at is not None, (outcomes, a.health().detail)
    for _ in range(5):
        await round_of_publishes()
    published = seq
    print(
        f"\nfailover: {published} publishes: {dict(outcomes)}; per channel "
        f"{ {c: dict(v) for c, v in by_shard.items()} }; delivery resumed {resumed_at - down_at:.2f}s after the kill"
    )
    assert sum(outcomes.values()) == published
    assert by_shard[victim_channel]["errored"] > 0
    for channel, counts in by_shard.items():
        if channel != victim_channel:
            assert counts["errored"] == 0, (channel, counts)  # the other shards kept working
    acked_victim = by_shard[victim_channel]["acked"]
    await inboxes[victim_channel].wait_for(acked_victim)
    assert len(inboxes[victim_channel].items) == acked_victim
    new_owner = a.owner_of(channel_key(a.prefix, victim_channel))
    assert new_owner != victim_address and new_owner in a.shards
    # Presence moved with the slots: the promoted replica has it (or the node re-registered it).
    await a.presence_add("online", "alice")
    assert await b.presence_members("online") == ["alice"]


@pytest_twisted.ensureDeferred
async def test_ask_during_a_slot_migration_is_followed(redis_cluster, cluster_nodes) -> None:
    """
    A presence scope's slot is MIGRATING on its master and IMPORTING on
    another; its key is not on the source yet, so the source answers
    ``ASK``: the node sends ``ASKING`` and the script to the target, and
    keeps its slot map (an ASK is one command's detour, not a move).
    """
    a = cluster_nodes(redis_cluster.url, "node-a")
    await a.start()
    scope = f"group:ask-{uuid.uuid4().hex[:6]}"
    key = a.presence.store.scope_key(scope)
    slot = key_slot(key)
    source = redis_cluster.owner_of_slot(slot)
    target = next(p for p in redis_cluster.masters() if p != source)
    ids = {p: redis_cluster.client(p).execute_command("CLUSTER", "MYID") for p in (source, target)}
    redis_cluster.client(target).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
    redis_cluster.client(source).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
    try:
        assert await a.presence_add(scope, "alice") is True
        on_target = redis.Redis(port=target, socket_timeout=2, single_connection_client=True)
        on_target.execute_command("ASKING")
        assert on_target.hkeys(key) == [b"alice"]
        on_target.close()
        with pytest.raises(redis.exceptions.AskError):  # not on the source: it redirects
            redis_cluster.client(source).hkeys(key)
        assert a.owner_of(key) == ("127.0.0.1", source)
    finally:
        for port in redis_cluster.masters():
            redis_cluster.client(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
    # The migration is over; the stale map meets MOVED on a script too.
    assert await a.presence_members(scope) == ["alice"]
    assert a.owner_of(key) == ("127.0.0.1", target)
