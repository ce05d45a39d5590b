"""
The Redis backend beyond the shared contract: node death, heartbeats,
dropped connections, timeouts, Redis restarts, write batching and bad
input on the wire.

The tests reach into Redis with redis-py (a test dependency only), a
client independent of the one under test.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from typing import Any

import pytest
import pytest_twisted
import redis
from twisted.internet.defer import gatherResults

from improto.backends.interface import Audience, BackendState, BackendUnavailable, Envelope
from improto.backends.redis import RedisBackend
from improto.backends.redis.client import RespConnection
from tests.backends.support import Inbox, envelope, eventually
from tests.redis_fixture import RedisServer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _events(events: list[dict[str, Any]], fragment: str, node: RedisBackend | None = None) -> list[dict[str, Any]]:
    return [e for e in events if fragment in e["log_format"] and (node is None or e.get("node_id") == node.node_id)]


@pytest.mark.slow
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
    await eventually(lambda: a.publish("user:ghost", envelope()).addCallback(lambda n: n == 0), 3)
    # The doomed node's heartbeat TTL is 0.6 s; the deadline leaves slack for a busy machine.
    await eventually(lambda: a.presence_members("online").addCallback(lambda m: m == ["alice"]), 0.6 + 2)
    assert await a.presence_add("online", "ghost") is True


_DOOMED_NODE = """
import sys
from twisted.internet import defer, reactor
from improto.backends.redis import RedisBackend
from improto.backends.redis.client import RespConnection

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


@pytest.mark.slow
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


def _kill_clients(redis_url: str, node: RedisBackend, client: redis.Redis | None = None) -> None:
    own = client is None
    client = client or redis.Redis.from_url(redis_url)
    for info in client.client_list():
        if info["name"].startswith(f"improto:{node.node_id}:"):
            client.client_kill_filter(_id=info["id"])
    if own:
        client.close()


@pytest.mark.slow
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
    # Commands go to the connections themselves, not through ClientService's
    # proxy (a Python __getattr__ per call); the proxy still hears the loss.
    before = [a.command_link.ready, a.subscriber_link.ready]
    assert [type(conn) for conn in before] == [RespConnection, RespConnection]
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
    after = [a.command_link.ready, a.subscriber_link.ready]
    assert [type(conn) for conn in after] == [RespConnection, RespConnection]
    assert not any(new is old for new, old in zip(after, before, strict=True))
    assert len(_events(log_events, "reconnecting", a)) == 1
    assert len(_events(log_events, "restored", a)) == 1


@pytest.mark.slow
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


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_redis_restart(
    redis_nodes: Any,
    private_redis: RedisServer,
    log_events: list[dict[str, Any]],
    caplog_events: list[dict[str, Any]],
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
    # A few failed reconnect attempts, which must not log.
    attempts = a.stats.commands.reconnects
    await eventually(lambda: a.stats.commands.reconnects >= attempts + 3, 5)

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
    assert _noise(caplog_events) == []


def _noise(events: list[dict[str, Any]]) -> list[str]:
    """Errors, and ClientService's line per reconnect attempt."""
    return [
        str(e.get("log_format") or e.get("log_failure"))
        for e in events
        if e.get("isError") or e.get("log_failure") is not None or "retry" in (e.get("log_format") or "")
    ]


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_reconnect_that_fails_its_set_up_backs_off_and_recovers(
    redis_nodes: Any, private_redis: RedisServer, caplog_events: list[dict[str, Any]]
) -> None:
    """
    Redis starts asking for a password the node does not have: each new
    connection is made, then fails its set-up. That is retried with
    backoff (not once per initial delay), reported in health, and
    recovers when Redis stops asking.
    """
    a = redis_nodes("node-a", url=private_redis.url, reconnect_initial_delay=0.05, reconnect_max_delay=0.4)
    await a.start()
    admin = redis.Redis.from_url(private_redis.url)
    try:
        admin.config_set("requirepass", "s3cret")
        _kill_clients(private_redis.url, a, admin)
        await eventually(lambda: "refused AUTH" in a.health().detail, 5)
        assert a.health().state is BackendState.UNAVAILABLE
        assert a.health().detail.endswith("; retrying")
        with pytest.raises(BackendUnavailable):
            await a.publish("group:lobby", envelope())
        # Record the delays the retry policy asks for (not how long they
        # took: no timing in tests). Without backoff across failed set-ups
        # every attempt would wait the initial 0.05 s again.
        link = a.command_link
        delays: list[float] = []
        backoff = link._backoff
        link._backoff = lambda attempt: delays.append(backoff(attempt)) or delays[-1]
        await eventually(lambda: len(delays) >= 4, 20)
        assert delays == sorted(delays) and delays[-1] > 0.05 * 2 ** 2
    finally:
        admin.config_set("requirepass", "")
        admin.close()
    await eventually(lambda: a.health().ok, 5)
    assert await a.publish("group:lobby", envelope()) == 0
    assert _noise(caplog_events) == []


# -- Redis only: batching and bad input ------------------------------------


@pytest_twisted.ensureDeferred
async def test_publishes_of_one_turn_share_one_write(redis_nodes: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    a = redis_nodes("node-a")
    await a.start()
    transport = a.command_link.ready.transport  # type: ignore[union-attr]
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
async def test_private_messages_of_one_turn_are_one_script_each_with_its_own_answer(
    redis_nodes: Any, redis_url: str, redis_prefix: str
) -> None:
    a = redis_nodes("node-a")
    b = redis_nodes("node-b")
    await gatherResults([a.start(), b.start()])
    to_carol = Inbox()
    await b.subscribe("user:carol", to_carol)
    await gatherResults([a.mark_seen(user, 0, 60) for user in ("bob", "dave")])
    # dave's seq key is not a number: his append fails in Redis (INCR).
    redis.Redis.from_url(redis_url).hset(f"{redis_prefix}{{user:dave}}:seq", "x", "1")
    before = a.stats.commands.commands
    sends = [
        a.send_private("user:bob", envelope(b"1"), "user:alice", "bob", "alice\n1", 60),
        a.send_private("user:carol", envelope(b"2"), "user:alice", "carol", "alice\n2", 60),
        a.send_private("user:bob", envelope(b"3"), "user:alice", "bob", "alice\n1", 60),
        a.send_private("user:dave", envelope(b"4"), "user:alice", "dave", "alice\n4", 60),
        a.send_private("user:bob", envelope(b"5"), "user:alice", "bob", "alice\n5", 60),
    ]
    results: list[Any] = []
    for d in sends:
        d.addBoth(results.append)
    await eventually(lambda: len(results) == len(sends))
    assert a.stats.commands.commands - before == 1
    bob1, carol, bob1_again, dave, bob5 = results
    assert (bob1.seq, bob1.duplicate) == (1, False)
    assert carol == 1  # unseen: live, to node b
    assert (bob1_again.seq, bob1_again.duplicate) == (1, True)
    assert dave.check(BackendUnavailable) and "WRONGTYPE" in str(dave.value)
    assert (bob5.seq, bob5.duplicate) == (2, False)
    assert [e.data for e in await to_carol.wait_for(1)] == [b"2"]
    # The sender's copies of the two stored messages, after the failed one too.
    assert [e.data for e in (await a.history("user:alice", 0, 10)).messages] == [b"1", b"5"]


@pytest_twisted.ensureDeferred
async def test_a_command_between_private_messages_keeps_their_order(redis_nodes: Any) -> None:
    a = redis_nodes("node-a")
    b = redis_nodes("node-b")
    await gatherResults([a.start(), b.start()])
    seen: list[bytes] = []
    await b.subscribe("user:bob", lambda e: seen.append(e.data))
    await b.subscribe("group:lobby", lambda e: seen.append(e.data))
    before = a.stats.commands.commands
    await gatherResults([
        a.send_private("user:bob", envelope(b"first"), None, "bob"),
        a.publish("group:lobby", envelope(b"between")),
        a.send_private("user:bob", envelope(b"last"), None, "bob"),
    ])
    assert a.stats.commands.commands - before == 3
    await eventually(lambda: len(seen) == 3)
    assert seen == [b"first", b"between", b"last"]


@pytest_twisted.ensureDeferred
async def test_a_private_batch_loads_its_script_when_redis_lost_it(redis_nodes: Any, redis_url: str) -> None:
    a = redis_nodes("node-a")
    await a.start()
    redis.Redis.from_url(redis_url).script_flush()
    results = await gatherResults([
        a.send_private("user:alice", envelope(b"1"), None, None),
        a.send_private("user:alice", envelope(b"2"), None, None),
    ])
    assert [r.seq for r in results] == [1, 2]


@pytest_twisted.ensureDeferred
async def test_unbatched_mode_sends_a_private_script_per_message(redis_nodes: Any) -> None:
    a = redis_nodes("node-a", batch_writes=False)
    await a.start()
    before = a.stats.commands.commands
    results = await gatherResults([a.send_private("user:alice", envelope(), None, None) for _ in range(3)])
    assert [r.seq for r in results] == [1, 2, 3]
    assert a.stats.commands.commands - before == 3


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


@pytest_twisted.ensureDeferred
async def test_stop_while_starting(
    redis_nodes: Any, redis_url: str, caplog_events: list[dict[str, Any]]
) -> None:
    a = redis_nodes("node-a")
    starting = a.start()
    await a.stop()
    with pytest.raises(BackendUnavailable):
        await starting
    assert a.health().state is BackendState.STOPPED
    client = redis.Redis.from_url(redis_url)
    try:
        await eventually(
            lambda: not any(c["name"].startswith("improto:node-a:") for c in client.client_list()), 5
        )
    finally:
        client.close()
    assert _noise(caplog_events) == []


@pytest_twisted.ensureDeferred
async def test_presence_and_its_announcement_are_one_script(redis_nodes: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import hiredis

    from improto.backends.redis import presence
    from improto.router import Router
    from tests.fakes import FakeLink

    node = redis_nodes("node-a")
    await node.start()
    router = Router(node)
    watcher = FakeLink()
    router.connect(watcher, "watcher", native=True)  # someone who hears presence
    await eventually(lambda: node.presence_members("online").addCallback(lambda m: m == ["watcher"]))
    transport = node.command_link.ready.transport  # type: ignore[union-attr]
    reader = hiredis.Reader()
    monkeypatch.setattr(transport, "write", lambda data, write=transport.write: reader.feed(data) or write(data))
    alice = router.connect(FakeLink(), "alice", native=False)
    await eventually(lambda: len([f for f in watcher.json() if f.get("type") == "presence"]) >= 2)
    router.disconnect(alice)
    await eventually(lambda: len([f for f in watcher.json() if f.get("type") == "presence"]) >= 4)
    sent = []
    while (command := reader.gets()) is not False:
        sent.append(command)
    changes = [(c[3:5], c[7::4]) for c in sent if c[:2] == [b"EVALSHA", presence.CHANGES.sha.encode()]]
    # Online and lobby join on connect, lobby leave and offline on disconnect:
    # two changes per script call, each of which also published the two
    # announcements (no PUBLISH of their own).
    assert len(changes) == 2 and not [c for c in sent if c[0] == b"PUBLISH"]
    assert [ops for _, ops in changes] == [[b"a", b"a"], [b"r", b"r"]]
    events = [(f["event"], f["user"]) for f in watcher.take() if f.get("type") == "presence"]
    assert events[-4:] == [("online", "alice"), ("join", "alice"), ("leave", "alice"), ("offline", "alice")]


@pytest_twisted.ensureDeferred
async def test_presence_changes_of_one_turn_are_one_script_each_with_its_own_answer(
    redis_nodes: Any, redis_url: str, redis_prefix: str
) -> None:
    a = redis_nodes("node-a")
    await a.start()
    redis.Redis.from_url(redis_url).set(f"{redis_prefix}presence:broken", "not a hash")
    before = a.stats.commands.commands
    changes = [
        a.presence_add("room", "alice"),
        a.presence_add("broken", "alice"),
        a.presence_add("room", "alice"),
        a.presence_remove("room", "alice"),
    ]
    results: list[Any] = []
    for d in changes:
        d.addBoth(results.append)
    await eventually(lambda: len(results) == len(changes))
    assert a.stats.commands.commands - before == 1
    first, broken, again, removed = results
    assert (first, again, removed) == (True, False, True)
    assert broken.check(BackendUnavailable) and "WRONGTYPE" in str(broken.value)
    assert await a.presence_members("room") == []


@pytest_twisted.ensureDeferred
async def test_a_part_that_cannot_be_packed_fails_alone(redis_nodes: Any) -> None:
    a = redis_nodes("node-a")
    await a.start()
    changes = [a.presence_add("room", "alice"), a.presence_add("room", "\ud800"), a.presence_add("room", "bob")]
    results: dict[int, Any] = {}
    for i, d in enumerate(changes):
        d.addBoth(lambda result, i=i: results.__setitem__(i, result))
    await eventually(lambda: len(results) == len(changes))
    alice, unsendable, bob = (results[i] for i in range(3))
    assert (alice, bob) == (True, True)
    assert unsendable.check(UnicodeEncodeError)
    assert await a.presence_members("room") == ["alice", "bob"]
    assert a.health().state is BackendState.OK


@pytest_twisted.ensureDeferred
async def test_a_batch_that_cannot_be_packed_drops_the_connection_not_the_pipeline(redis_nodes: Any) -> None:
    class Broken:
        def pack(self) -> bytes:
            raise RuntimeError("bug")

    a = redis_nodes("node-a")
    await a.start()
    conn = a.command_link.ready
    before, broken, after = [], [], []
    a.publish("group:lobby", envelope()).addBoth(before.append)
    conn.execute_batch(Broken()).addBoth(broken.append)  # type: ignore[union-attr]
    await eventually(lambda: bool(broken and before))
    assert broken[0].check(BackendUnavailable) and "could not pack" in str(broken[0].value)
    assert before[0].check(BackendUnavailable)  # in the same write: never sent
    await eventually(lambda: a.health().state is BackendState.OK and a.command_link.ready is not conn)
    a.publish("group:lobby", envelope()).addBoth(after.append)
    await eventually(lambda: after == [0])


@pytest_twisted.ensureDeferred
async def test_a_node_without_native_sessions_does_not_decode_presence(
    redis_nodes: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Every node hears its own presence announcements on the lobby channel.
    One with only seed sessions drops them undecoded (they would reach
    nobody there); a native session on another node still hears them all,
    and a stored (positioned) native-only envelope is decoded everywhere.
    """
    from improto.backends.redis import subscriptions
    from improto.router import Router
    from tests.fakes import FakeLink

    seeds_only, with_native = redis_nodes("node-a"), redis_nodes("node-b")
    await gatherResults([seeds_only.start(), with_native.start()])
    seeds_router, native_router = Router(seeds_only), Router(with_native)
    def confirmed(node: RedisBackend, channel: str) -> bool:
        return channel in node._subs._active

    watcher = FakeLink()
    native_router.connect(watcher, "watcher", native=True)
    await eventually(lambda: confirmed(with_native, "group:lobby"))
    seeds_router.connect(FakeLink(), "carol", native=False)  # node-a holds the lobby
    await eventually(lambda: confirmed(seeds_only, "group:lobby"))
    await eventually(lambda: any(f.get("user") == "carol" for f in watcher.json()))
    decoded: list[str] = []
    decode = subscriptions.decode_envelope
    monkeypatch.setattr(subscriptions, "decode_envelope",
                        lambda payload: decoded.append(decode(payload).origin_node) or decode(payload))
    received = seeds_only.stats.received
    alice = seeds_router.connect(FakeLink(), "alice", native=False)
    seeds_router.disconnect(alice)
    await eventually(lambda: len([f for f in watcher.json() if f.get("type") == "presence"
                                  and f.get("user") == "alice"]) >= 4)
    events = [(f["event"], f["user"]) for f in watcher.take() if f.get("type") == "presence"]
    assert events[-4:] == [("online", "alice"), ("join", "alice"), ("leave", "alice"), ("offline", "alice")]
    await eventually(lambda: seeds_only.stats.received - received >= 4)
    # node-b decoded the four (it has a native session); node-a decoded none.
    assert decoded.count(seeds_only.node_id) == 4
    assert seeds_only.stats.received - received == 4
    bob = seeds_router.connect(FakeLink(), "bob", native=False)
    await eventually(lambda: confirmed(seeds_only, "user:bob"))
    # A native-only copy with a position is decoded (its seq is tracked) even so.
    before = len(decoded)
    copy = Envelope("elsewhere", "s", b'{"type":"private"}', audience=Audience.NATIVE)
    await with_native.append("user:bob", "user:bob", copy)
    await eventually(lambda: len(decoded) > before)
    seeds_router.disconnect(bob)
