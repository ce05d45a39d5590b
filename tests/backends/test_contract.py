"""
The IBackend contract, checked on every backend with the same tests.

Two nodes of one cluster are two MemoryBackend objects on one MemoryHub,
or two RedisBackend objects on the private test Redis. Tests that only
make sense with a network (node death, Redis restarts, pipelining, URLs)
follow in the Redis-only section.

The Redis fixtures come from ``tests/redis_fixture.py`` via conftest.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
import pytest_twisted
import redis
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from zope.interface.verify import verifyObject

from improto.backends.interface import (
    Audience,
    BackendState,
    BackendUnavailable,
    Envelope,
    IBackend,
)
from improto.backends.memory import MemoryBackend, MemoryHub
from improto.backends.redis.backend import RedisBackend, check_reachable, parse_redis_url
from improto.backends.redis.client import PythonReader, RedisReplyError, make_reader
from improto.backends.redis.wire import WireError, decode_envelope, encode_envelope
from tests.redis_fixture import RedisServer, free_port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def envelope(data: bytes = b"hello", **kw: Any) -> Envelope:
    return Envelope(origin_node=kw.pop("origin_node", "node-a"), origin_session="s1", data=data, **kw)


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 5.0) -> None:
    deadline = reactor.seconds() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if reactor.seconds() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await sleep(0.02)


class Inbox:
    """A subscribe callback that tests can wait on."""

    def __init__(self) -> None:
        self.items: list[Envelope] = []

    def __call__(self, env: Envelope) -> None:
        self.items.append(env)

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Envelope]:
        await eventually(lambda: len(self.items) >= count, timeout)
        return self.items


@attrs.define
class Cluster:
    """Two started nodes, and a way to make more of the same kind."""

    kind: str
    a: Any
    b: Any
    make: Callable[..., Any]

    async def settle(self, *nodes: Any) -> None:
        """
        Wait until every envelope published so far reached ``nodes``:
        Redis delivers one publisher's messages to a subscriber in order,
        so once a marker published afterwards arrives, the rest has.
        """
        for node in nodes or (self.a, self.b):
            marker = Inbox()
            await node.subscribe("test:barrier", marker)
            await self.a.publish("test:barrier", envelope(b"barrier"))
            await marker.wait_for(1)
            await node.unsubscribe("test:barrier")


@pytest_twisted.async_yield_fixture(params=["memory", "redis"])
async def cluster(request: pytest.FixtureRequest):
    made: list[Any] = []
    if request.param == "memory":
        hub = MemoryHub()

        def make(node_id: str, **_: Any) -> Any:
            made.append(MemoryBackend(hub, node_id))
            return made[-1]

    else:
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
async def test_publish_after_stop_fails(cluster: Cluster) -> None:
    await cluster.a.stop()
    with pytest.raises(BackendUnavailable):
        await cluster.a.publish("group:lobby", envelope())
    assert await cluster.b.publish("group:lobby", envelope()) == 0


# -- Redis only: wire format and parser ------------------------------------


def test_wire_round_trip_and_errors() -> None:
    env = Envelope("n", "s", b"\x00\xff" * 10, True, Audience.NATIVE, "x")
    payload = encode_envelope(env)
    assert decode_envelope(payload) == env
    assert len(payload) == 9 + 1 + 1 + 1 + 20
    with pytest.raises(WireError, match="version 9"):
        decode_envelope(b"\x09" + payload[1:])
    with pytest.raises(WireError, match="header"):
        decode_envelope(payload[:5])
    with pytest.raises(WireError, match="truncated"):
        decode_envelope(payload[:10])
    with pytest.raises(WireError, match="audience"):
        decode_envelope(payload[:2] + b"\x07" + payload[3:])


def test_python_reader_matches_hiredis_byte_by_byte() -> None:
    stream = (
        b"+OK\r\n-ERR wrong\r\n:42\r\n$-1\r\n*-1\r\n$0\r\n\r\n"
        b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$4\r\n\r\n\x00\xff\r\n"
        b"*2\r\n*1\r\n:1\r\n$3\r\nabc\r\n"
    )

    def drain(reader: Any, chunks: list[bytes]) -> list[Any]:
        out = []
        for chunk in chunks:
            reader.feed(chunk)
            while (reply := reader.gets()) is not False:
                out.append(str(reply) if isinstance(reply, RedisReplyError) else reply)
        return out

    one_by_one = [stream[i : i + 1] for i in range(len(stream))]
    expected = [b"OK", "ERR wrong", 42, None, None, b"", [b"message", b"ch", b"\r\n\x00\xff"], [[1], b"abc"]]
    assert drain(PythonReader(), one_by_one) == expected
    assert drain(PythonReader(), [stream]) == expected
    assert drain(make_reader(), one_by_one) == expected


# -- Redis only: URLs and start-up -----------------------------------------


@pytest.mark.parametrize(
    "url, complaint",
    [
        ("http://127.0.0.1:6379/0", "scheme"),
        ("rediss://127.0.0.1:6379/0", "scheme"),
        ("127.0.0.1:6379", "scheme"),
        ("redis://127.0.0.1:port/0", "port"),
        ("redis://127.0.0.1:70000/0", "port"),
        ("redis://127.0.0.1:0/0", "port"),
        ("redis://127.0.0.1:6379/db1", "database"),
        ("redis://127.0.0.1:6379/-1", "database"),
        ("redis://127.0.0.1:6379/0?colour=blue", "unknown option"),
        ("redis://127.0.0.1:6379/0?heartbeat_ttl=soon", "number"),
        ("redis://127.0.0.1:6379/0?heartbeat_interval=5&heartbeat_ttl=4", "heartbeat_ttl"),
        ("redis://:s3cret@127.0.0.1:x/0", "port"),
    ],
)
def test_malformed_url_is_a_one_line_value_error(url: str, complaint: str) -> None:
    with pytest.raises(ValueError) as info:
        RedisBackend.from_url(url, reactor=reactor)
    message = str(info.value)
    assert complaint in message
    assert "\n" not in message
    assert "s3cret" not in message


def test_url_parts_and_options() -> None:
    address, options = parse_redis_url("redis://user:p%40ss@redis.example:6380/2?heartbeat_interval=1&heartbeat_ttl=3")
    assert (address.host, address.port, address.db) == ("redis.example", 6380, 2)
    assert (address.username, address.password) == ("user", "p@ss")
    assert options == {"heartbeat_interval": 1.0, "heartbeat_ttl": 3.0}
    assert "p@ss" not in repr(address)
    backend = RedisBackend.from_url("redis://", reactor=reactor, prefix="x:", heartbeat_interval=2.0, heartbeat_ttl=7)
    assert (backend.address.host, backend.address.port, backend.address.db) == ("localhost", 6379, 0)
    assert (backend.options.prefix, backend.options.heartbeat_ttl) == ("x:", 7)


@pytest_twisted.ensureDeferred
async def test_unreachable_at_start_fails_in_one_line() -> None:
    port = free_port()
    node = RedisBackend.from_url(f"redis://127.0.0.1:{port}/0", reactor=reactor)
    with pytest.raises(BackendUnavailable) as info:
        await node.start()
    assert str(info.value) == f"cannot reach Redis at 127.0.0.1:{port}: Connection refused"
    assert node.health().state is BackendState.STARTING
    assert "Connection refused" in node.health().detail
    with pytest.raises(BackendUnavailable):
        await node.publish("group:lobby", envelope())
    await node.stop()


def test_check_reachable(redis_url: str) -> None:
    check_reachable(redis_url, timeout=2)
    port = free_port()
    with pytest.raises(BackendUnavailable) as info:
        check_reachable(f"redis://127.0.0.1:{port}/0", timeout=2)
    assert str(info.value) == f"cannot reach Redis at 127.0.0.1:{port}: Connection refused"
    with pytest.raises(ValueError, match="port"):
        check_reachable("redis://127.0.0.1:nope/0")


@pytest_twisted.ensureDeferred
async def test_password_and_database(redis_prefix: str) -> None:
    server = RedisServer(extra_args=["--requirepass", "s3cret"])
    server.start()
    try:
        for url, complaint in [
            (f"redis://:nope@127.0.0.1:{server.port}/0", "refused AUTH"),
            (f"redis://127.0.0.1:{server.port}/0", "refused AUTH"),
            (f"redis://:s3cret@127.0.0.1:{server.port}/99", "refused db 99"),
        ]:
            with pytest.raises(BackendUnavailable, match=complaint) as info:
                check_reachable(url, timeout=2)
            assert "\n" not in str(info.value) and "s3cret" not in str(info.value)
        check_reachable(f"redis://:s3cret@127.0.0.1:{server.port}/3", timeout=2)
        wrong = RedisBackend.from_url(f"redis://:nope@127.0.0.1:{server.port}/0", reactor=reactor)
        with pytest.raises(BackendUnavailable, match="refused AUTH") as info:
            await wrong.start()
        assert "nope" not in str(info.value)
        bad_db = RedisBackend.from_url(f"redis://:s3cret@127.0.0.1:{server.port}/99", reactor=reactor)
        with pytest.raises(BackendUnavailable, match="refused db 99"):
            await bad_db.start()
        node = RedisBackend.from_url(
            f"redis://:s3cret@127.0.0.1:{server.port}/3", reactor=reactor, prefix=redis_prefix
        )
        await node.start()
        inbox = Inbox()
        await node.subscribe("user:alice", inbox)
        assert await node.publish("user:alice", envelope()) == 1
        await node.presence_add("online", "alice")
        client = redis.Redis(port=server.port, password="s3cret", db=3)
        assert client.hkeys(f"{redis_prefix}presence:online") == [b"alice"]
        assert client.exists(f"{redis_prefix}node:{node.node_id}") == 1
        await node.stop()
        assert client.keys(f"{redis_prefix}*") == []
        client.close()
    finally:
        server.cleanup()


# -- Redis only: faults ----------------------------------------------------


@pytest.fixture
def redis_nodes(redis_url: str, redis_prefix: str):
    """Make nodes on ``redis_url`` (or ``url=``), all stopped after the test."""
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
def log_events():
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "improto.backends.redis.backend":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def _events(events: list[dict[str, Any]], fragment: str, node: RedisBackend | None = None) -> list[dict[str, Any]]:
    return [e for e in events if fragment in e["log_format"] and (node is None or e.get("node_id") == node.node_id)]


@pytest_twisted.ensureDeferred
async def test_dead_node_vanishes_from_presence(redis_nodes: Any, redis_url: str, redis_prefix: str) -> None:
    a = redis_nodes("node-a")
    await a.start()
    child = subprocess.Popen(
        [sys.executable, "-c", _DOOMED_NODE, redis_url, redis_prefix],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    try:
        ready, _, _ = select.select([child.stdout], [], [], 10)
        assert ready and child.stdout.readline().strip() == b"READY"  # type: ignore[union-attr]
        await a.presence_add("online", "alice")
        assert await a.presence_members("online") == ["alice", "ghost"]
        assert await a.presence_add("online", "ghost") is False
        assert await a.presence_remove("online", "ghost") is False
        assert await a.publish("user:ghost", envelope()) == 1
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(5)
    killed = reactor.seconds()
    await eventually(lambda: a.publish("user:ghost", envelope()).addCallback(lambda n: n == 0), 3)
    await eventually(lambda: a.presence_members("online").addCallback(lambda m: m == ["alice"]), 0.6 + 2)
    # The bound is the doomed node's heartbeat TTL (0.6 s), with slack for a busy machine.
    assert reactor.seconds() - killed < 0.6 + 2
    assert await a.presence_add("online", "ghost") is True


_DOOMED_NODE = """
import sys
from twisted.internet import defer, reactor
from improto.backends.redis.backend import RedisBackend

async def main():
    node = RedisBackend.from_url(sys.argv[1], reactor=reactor, prefix=sys.argv[2],
                                 node_id="doomed", heartbeat_interval=0.2, heartbeat_ttl=0.6)
    await node.start()
    await node.subscribe("user:ghost", lambda envelope: None)
    await node.presence_add("online", "ghost")
    print("READY", flush=True)

def fail(failure):
    print("FAILED", failure.getErrorMessage(), flush=True)
    reactor.stop()

reactor.callWhenRunning(lambda: defer.ensureDeferred(main()).addErrback(fail))
reactor.run()
"""


@pytest_twisted.ensureDeferred
async def test_expired_heartbeat_re_registers_presence(redis_nodes: Any, redis_url: str, redis_prefix: str) -> None:
    a = redis_nodes("node-a", heartbeat_interval=0.2, heartbeat_ttl=1.0)
    b = redis_nodes("node-b")
    await a.start()
    await b.start()
    await a.presence_add("online", "alice")
    client = redis.Redis.from_url(redis_url)
    client.delete(f"{redis_prefix}node:node-a")
    client.close()
    assert await b.presence_members("online") == []
    await eventually(lambda: b.presence_members("online").addCallback(lambda m: m == ["alice"]), 3)


def _kill_clients(redis_url: str, node: RedisBackend) -> None:
    client = redis.Redis.from_url(redis_url)
    for info in client.client_list():
        if info["name"].startswith(f"improto:{node.node_id}:"):
            client.client_kill_filter(_id=info["id"])
    client.close()


@pytest_twisted.ensureDeferred
async def test_dropped_connection_fails_in_flight_and_reconciles(
    redis_nodes: Any, redis_url: str, log_events: list[dict[str, Any]]
) -> None:
    a, b = redis_nodes("node-a"), redis_nodes("node-b")
    await a.start()
    await b.start()
    inbox = Inbox()
    await a.subscribe("group:lobby", inbox)
    await a.presence_add("online", "alice")
    await a.presence_add("online", "bob")
    # The reactor does not run during the kill: these are written to
    # connections Redis has already closed, and must fail, not hang.
    _kill_clients(redis_url, a)
    in_flight = [a.publish("group:lobby", envelope()), a.presence_remove("online", "bob")]
    for d in in_flight:
        with pytest.raises(BackendUnavailable):
            await d
    assert a.health().state is BackendState.UNAVAILABLE
    await eventually(lambda: a.health().ok, 5)
    assert await b.presence_members("online") == ["alice"]
    assert await b.publish("group:lobby", envelope(b"after")) == 1
    assert [e.data for e in await inbox.wait_for(1)] == [b"after"]
    assert len(_events(log_events, "reconnecting", a)) == 1
    assert len(_events(log_events, "restored", a)) == 1


@pytest_twisted.ensureDeferred
async def test_unanswered_command_times_out(redis_nodes: Any, private_redis: RedisServer) -> None:
    a = redis_nodes("node-a", url=private_redis.url, command_timeout=0.3)
    await a.start()
    client = redis.Redis.from_url(private_redis.url)
    client.client_pause(1000, all=True)
    try:
        with pytest.raises(BackendUnavailable, match="did not answer within 0.3s"):
            await a.publish("group:lobby", envelope())
        assert a.health().state is BackendState.UNAVAILABLE
    finally:
        client.client_unpause()
        client.close()
    await eventually(lambda: a.health().ok, 5)
    assert await a.publish("group:lobby", envelope()) == 0


@pytest_twisted.ensureDeferred
async def test_redis_restart(
    redis_nodes: Any, private_redis: RedisServer, log_events: list[dict[str, Any]]
) -> None:
    redis_server = private_redis
    a, b = redis_nodes("node-a", url=redis_server.url), redis_nodes("node-b", url=redis_server.url)
    await a.start()
    await b.start()
    inbox_a, inbox_b, late = Inbox(), Inbox(), Inbox()
    await a.subscribe("group:lobby", inbox_a)
    await b.subscribe("group:lobby", inbox_b)
    await a.presence_add("online", "alice")
    await b.presence_add("online", "bob")
    await b.presence_add("group:lobby", "bob")

    redis_server.stop()
    await eventually(lambda: not a.health().ok and not b.health().ok, 5)
    assert a.health().state is BackendState.UNAVAILABLE
    assert "reconnecting" in a.health().detail or "retrying" in a.health().detail
    for call in (
        lambda: a.publish("group:lobby", envelope()),
        lambda: a.presence_add("online", "carol"),
        lambda: a.presence_remove("online", "alice"),
        lambda: a.presence_members("online"),
        lambda: a.subscribe("group:late", late),
    ):
        d = call()
        assert d.called, "must fail at once while Redis is down"
        with pytest.raises(BackendUnavailable):
            await d
    await sleep(0.5)  # a few reconnect attempts, which must not log

    redis_server.start()
    await eventually(lambda: a.health().ok and b.health().ok, 8)
    assert await a.presence_members("online") == ["bob"]  # alice was removed while down
    assert await a.presence_members("group:lobby") == ["bob"]
    assert await b.publish("group:lobby", envelope(b"back")) == 2
    assert [e.data for e in await inbox_a.wait_for(1)] == [b"back"]
    assert [e.data for e in await inbox_b.wait_for(1)] == [b"back"]
    assert await b.publish("group:late", envelope(b"late")) == 1
    assert [e.data for e in await late.wait_for(1)] == [b"late"]
    for node in (a, b):
        assert len(_events(log_events, "reconnecting", node)) == 1
        assert len(_events(log_events, "restored", node)) == 1


# -- Redis only: batching and bad input ------------------------------------


@pytest_twisted.ensureDeferred
async def test_publishes_of_one_turn_share_one_write(redis_nodes: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    a = redis_nodes("node-a")
    await a.start()
    transport = a._cmd.ready.transport  # type: ignore[union-attr]
    writes: list[bytes] = []
    real_write = transport.write

    def spy(data: bytes) -> None:
        writes.append(data)
        real_write(data)

    monkeypatch.setattr(transport, "write", spy)
    before = a.stats.commands.writes
    pending = [a.publish("group:lobby", envelope(str(i).encode())) for i in range(20)]
    assert writes == []
    assert await gatherResults(pending) == [0] * 20
    assert len(writes) == 1
    assert writes[0].count(b"PUBLISH") == 20
    assert a.stats.commands.writes - before == 1


@pytest_twisted.ensureDeferred
async def test_unbatched_mode_writes_per_command(redis_nodes: Any) -> None:
    a = redis_nodes("node-a", batch_writes=False)
    await a.start()
    before = a.stats.commands.writes
    await gatherResults([a.publish("group:lobby", envelope()) for _ in range(5)])
    assert a.stats.commands.writes - before == 5


@pytest_twisted.ensureDeferred
async def test_undecodable_messages_are_logged_once_per_cause(
    redis_nodes: Any, redis_url: str, redis_prefix: str, log_events: list[dict[str, Any]]
) -> None:
    a = redis_nodes("node-a")
    await a.start()
    inbox = Inbox()
    await a.subscribe("group:lobby", inbox)
    client = redis.Redis.from_url(redis_url)
    for garbage in [b"x", b"xyz", b"\x09" + b"\x00" * 12, b"oops" * 3]:
        client.publish(f"{redis_prefix}group:lobby", garbage)
    client.close()
    assert await a.publish("group:lobby", envelope(b"fine")) == 1
    assert [e.data for e in await inbox.wait_for(1)] == [b"fine"]
    assert dict(a.stats.decode_errors) == {
        "shorter than the envelope header": 2,
        "unsupported envelope version 9": 1,
        "unsupported envelope version 111": 1,
    }
    assert len(_events(log_events, "undecodable")) == 3


@pytest_twisted.ensureDeferred
async def test_a_failing_callback_does_not_stop_delivery(redis_nodes: Any) -> None:
    a = redis_nodes("node-a")
    await a.start()
    seen: list[bytes] = []

    def callback(env: Envelope) -> None:
        seen.append(env.data)
        if env.data == b"boom":
            raise RuntimeError("router bug")

    await a.subscribe("group:lobby", callback)
    await a.publish("group:lobby", envelope(b"boom"))
    await a.publish("group:lobby", envelope(b"next"))
    await eventually(lambda: seen == [b"boom", b"next"])
    assert a.health().ok


@pytest_twisted.ensureDeferred
async def test_subscribe_unsubscribe_subscribe_in_one_turn(redis_nodes: Any) -> None:
    a = redis_nodes("node-a")
    await a.start()
    first, second = Inbox(), Inbox()
    pending = [
        a.subscribe("group:lobby", first),
        a.unsubscribe("group:lobby"),
        a.subscribe("group:lobby", second),
    ]
    await gatherResults(pending)
    assert await a.publish("group:lobby", envelope()) == 1
    await second.wait_for(1)
    assert first.items == []
