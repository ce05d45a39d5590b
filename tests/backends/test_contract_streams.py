"""
The history half of the IBackend contract (append, history, idempotency,
last seen), checked on the memory backend, on a private redis-server and
on a private Redis Cluster with the same tests. Two nodes are two
backends on one hub / one Redis / one cluster.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from improto.backends.interface import Audience, BackendState, Envelope, IPrivateBackend, Retention
from improto.backends.memory import MemoryBackend, MemoryHub
from improto.backends.private import send_private_in_steps
from improto.backends.redis.backend import RedisBackend


def envelope(data: bytes = b'{"msg":"hello"}', **kw: Any) -> Envelope:
    return Envelope(origin_node="node-a", origin_session="s1", data=data, **kw)


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = reactor.seconds() + timeout
    while not check():
        if reactor.seconds() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await deferLater(reactor, 0.02, lambda: None)


@attrs.define
class Nodes:
    kind: str
    a: Any
    b: Any
    #: Moves the memory backend's clock; None on Redis (which has its own).
    clock: Any


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest_twisted.async_yield_fixture(params=["memory", "redis", "redis-cluster"])
async def nodes(request: pytest.FixtureRequest):
    if request.param == "memory":
        hub = MemoryHub()
        clock = Clock()
        hub.streams.clock = clock
        a, b = MemoryBackend(hub, "node-a"), MemoryBackend(hub, "node-b")
    elif request.param == "redis-cluster":
        from improto.backends.redis.cluster import ClusterBackend

        url = request.getfixturevalue("redis_cluster").url
        prefix = request.getfixturevalue("redis_prefix")
        clock = None
        a, b = (ClusterBackend.from_url(url, reactor=reactor, prefix=prefix, node_id=n) for n in ("node-a", "node-b"))
    else:
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
        clock = None
        a, b = (RedisBackend.from_url(url, reactor=reactor, prefix=prefix, node_id=n) for n in ("node-a", "node-b"))
    await a.start()
    await b.start()
    yield Nodes(request.param, a, b, clock)
    for node in (a, b):
        if node.health().state is not BackendState.STOPPED:
            await node.stop()


@pytest_twisted.ensureDeferred
async def test_append_numbers_stores_and_publishes_with_the_position(nodes: Nodes) -> None:
    got: list[Envelope] = []
    await nodes.b.subscribe("group:lobby", got.append)
    sent = [envelope(b'{"n":%d}' % i, exclude_session="s1", audience=Audience.NATIVE) for i in range(5)]
    results = await gatherResults([nodes.a.append("group:lobby", "group:lobby", e) for e in sent])
    assert [(r.seq, r.receivers, r.duplicate) for r in results] == [(i, 1, False) for i in range(1, 6)]
    await eventually(lambda: len(got) == 5)
    assert got == [attrs.evolve(e, stream="group:lobby", seq=i + 1) for i, e in enumerate(sent)]
    page = await nodes.b.history("group:lobby", 0, 100)
    assert page.messages == got
    assert (page.first_seq, page.last_seq) == (1, 5)
    other = await nodes.a.append("group:other", "group:other", envelope())
    assert (other.seq, other.receivers) == (1, 0)


@pytest_twisted.ensureDeferred
async def test_history_pages(nodes: Nodes) -> None:
    for i in range(1, 11):
        await nodes.a.append("user:bob", "user:bob", envelope(b"%d" % i))

    async def seqs(after: int, limit: int, before: int | None = None) -> list[int]:
        page = await nodes.b.history("user:bob", after, limit, before)
        return [e.seq for e in page.messages]

    assert await seqs(0, 3) == [1, 2, 3]
    assert await seqs(7, 100) == [8, 9, 10]
    assert await seqs(10, 5) == []
    assert await seqs(0, 3, before=10) == [7, 8, 9]
    assert await seqs(0, 3, before=2**53) == [8, 9, 10]
    assert await seqs(5, 10, before=8) == [6, 7]
    empty = await nodes.b.history("user:nobody", 0, 10)
    assert (empty.messages, empty.first_seq, empty.last_seq) == ([], 1, 0)


@pytest_twisted.ensureDeferred
async def test_history_is_bounded_by_size(nodes: Nodes) -> None:
    for node in (nodes.a, nodes.b):
        node.retention = Retention(size=3)
    for i in range(1, 8):
        await nodes.a.append("group:g", "group:g", envelope(b"%d" % i))
    page = await nodes.b.history("group:g", 0, 100)
    assert [e.seq for e in page.messages] == [5, 6, 7]
    assert (page.first_seq, page.last_seq) == (5, 7)


@pytest_twisted.ensureDeferred
async def test_history_is_bounded_by_age(nodes: Nodes) -> None:
    for node in (nodes.a, nodes.b):
        node.retention = Retention(size=100, age=0.3)
    await nodes.a.append("group:g", "group:g", envelope(b"old"))
    if nodes.clock is not None:
        nodes.clock.now += 1
    else:
        await deferLater(reactor, 0.4, lambda: None)
    await nodes.a.append("group:g", "group:g", envelope(b"new"))
    page = await nodes.b.history("group:g", 0, 100)
    assert [e.data for e in page.messages] == [b"new"]
    assert (page.first_seq, page.last_seq) == (2, 2)


@pytest_twisted.ensureDeferred
async def test_size_zero_stores_nothing_but_still_numbers(nodes: Nodes) -> None:
    nodes.a.retention = Retention(size=0)
    got: list[Envelope] = []
    await nodes.b.subscribe("group:g", got.append)
    assert (await nodes.a.append("group:g", "group:g", envelope())).seq == 1
    await eventually(lambda: len(got) == 1)
    assert got[0].seq == 1
    page = await nodes.a.history("group:g", 0, 10)
    assert (page.messages, page.last_seq) == ([], 1)


@pytest_twisted.ensureDeferred
async def test_idempotent_append_across_nodes(nodes: Nodes) -> None:
    got: list[Envelope] = []
    await nodes.b.subscribe("group:g", got.append)
    first = await nodes.a.append("group:g", "group:g", envelope(b"1"), "alice\nid-1", 300)
    again = await nodes.b.append("group:g", "group:g", envelope(b"1"), "alice\nid-1", 300)
    other = await nodes.b.append("group:g", "group:g", envelope(b"2"), "alice\nid-2", 300)
    assert (first.seq, first.receivers, first.duplicate) == (1, 1, False)
    assert (again.seq, again.receivers, again.duplicate) == (1, 1, True)
    assert (other.seq, other.duplicate) == (2, False)
    await eventually(lambda: len(got) == 2)
    assert [e.data for e in got] == [b"1", b"2"]
    assert [e.seq for e in (await nodes.a.history("group:g", 0, 10)).messages] == [1, 2]
    # A key is per stream: the same one on another stream is a new message.
    elsewhere = await nodes.a.append("group:h", "group:h", envelope(b"1"), "alice\nid-1", 300)
    assert (elsewhere.seq, elsewhere.duplicate) == (1, False)


@pytest_twisted.ensureDeferred
async def test_idempotency_window_ends(nodes: Nodes) -> None:
    await nodes.a.append("group:g", "group:g", envelope(), "k", 0.2)
    if nodes.clock is not None:
        nodes.clock.now += 1
    else:
        await deferLater(reactor, 0.3, lambda: None)
    again = await nodes.b.append("group:g", "group:g", envelope(), "k", 0.2)
    assert (again.seq, again.duplicate) == (2, False)


@pytest_twisted.ensureDeferred
async def test_last_seen_cursor_and_lifetime(nodes: Nodes) -> None:
    assert await nodes.a.last_seen("bob") is None
    await nodes.a.mark_seen("bob", 0, 0.3)
    assert await nodes.b.last_seen("bob") == 0
    await nodes.b.mark_seen("bob", 7, 0.3)
    await nodes.a.mark_seen("bob", 3, 0.3)  # never lowered
    assert await nodes.a.last_seen("bob") == 7
    if nodes.clock is not None:
        nodes.clock.now += 1
    else:
        await deferLater(reactor, 0.4, lambda: None)
    assert await nodes.a.last_seen("bob") is None


@pytest_twisted.ensureDeferred
async def test_stopped_backend_refuses_appends(nodes: Nodes) -> None:
    from improto.backends.interface import BackendUnavailable

    await nodes.a.stop()
    with pytest.raises(BackendUnavailable):
        await nodes.a.append("group:g", "group:g", envelope())
    with pytest.raises(BackendUnavailable):
        await nodes.a.history("group:g", 0, 10)


def send_private(node: Any) -> Callable[..., Any]:
    """
    The node's own one-call send as the router makes it (``send_private_to``,
    answered here by a Deferred) if it has one, else the reference made of
    plain calls. ``send_private`` itself: tests/backends/test_redis.py,
    test_memory_immediate.py.
    """
    own = IPrivateBackend(node, None)
    if own is None:
        return functools.partial(send_private_in_steps, node)

    def send(*args: Any, **kwargs: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        own.send_private_to(d, *args, **kwargs)
        return d

    return send


@attrs.define
class Recorded:
    """An answer of the caller's own, not a Deferred: what it was given."""

    results: list[Any] = attrs.Factory(list)
    failures: list[Failure] = attrs.Factory(list)

    def callback(self, result: Any) -> None:
        self.results.append(result)

    def errback(self, fail: Failure) -> None:
        self.failures.append(fail)


@pytest_twisted.ensureDeferred
async def test_a_private_message_to_an_unseen_user_is_published_live_not_stored(nodes: Nodes) -> None:
    to_bob: list[Envelope] = []
    to_alice: list[Envelope] = []
    sent = envelope(b'{"to":"bob"}', exclude_session="s1")
    # Nobody listens: nothing is delivered, not even the sender's copy.
    await nodes.b.subscribe("user:alice", to_alice.append)
    assert await send_private(nodes.a)("user:bob", sent, "user:alice", "bob", "alice\nid-1", 300) == 0
    await nodes.b.subscribe("user:bob", to_bob.append)
    assert await send_private(nodes.a)("user:bob", sent, "user:alice", "bob", "alice\nid-1", 300) == 1
    await eventually(lambda: len(to_bob) == 1 and len(to_alice) == 1)
    assert to_bob == [sent]
    assert to_alice == [attrs.evolve(sent, audience=Audience.NATIVE)]
    for stream in ("user:bob", "user:alice"):
        page = await nodes.b.history(stream, 0, 10)
        assert (page.messages, page.last_seq) == ([], 0)
    # Seen now: stored, and the key was not taken by the live sends.
    await nodes.b.mark_seen("bob", 0, 60)
    result = await send_private(nodes.a)("user:bob", sent, "user:alice", "bob", "alice\nid-1", 300)
    assert not isinstance(result, int)
    assert (result.seq, result.receivers, result.duplicate) == (1, 1, False)
    await eventually(lambda: len(to_bob) == 2 and len(to_alice) == 2)
    assert (to_bob[1].stream, to_bob[1].seq, to_alice[1].stream, to_alice[1].seq) == ("user:bob", 1, "user:alice", 1)


@pytest_twisted.ensureDeferred
async def test_a_private_message_to_a_seen_user_is_stored_with_the_senders_copy(nodes: Nodes) -> None:
    to_bob: list[Envelope] = []
    to_alice: list[Envelope] = []
    await nodes.b.subscribe("user:bob", to_bob.append)
    await nodes.b.subscribe("user:alice", to_alice.append)
    await nodes.a.append("user:alice", "user:alice", envelope(b"earlier"))
    await nodes.a.mark_seen("bob", 0, 60)
    sent = envelope(b'{"to":"bob"}', exclude_session="s1")
    first = await send_private(nodes.a)("user:bob", sent, "user:alice", "bob", "alice\nid-1", 300)
    again = await send_private(nodes.b)("user:bob", sent, "user:alice", "bob", "alice\nid-1", 300)
    assert (first.seq, first.receivers, first.duplicate) == (1, 1, False)
    assert (again.seq, again.receivers, again.duplicate) == (1, 1, True)
    await eventually(lambda: len(to_bob) == 1 and len(to_alice) == 2)
    assert to_bob == [attrs.evolve(sent, stream="user:bob", seq=1)]
    copy = attrs.evolve(sent, audience=Audience.NATIVE, stream="user:alice", seq=2)
    assert to_alice[1] == copy
    assert (await nodes.b.history("user:bob", 0, 10)).messages == to_bob
    assert (await nodes.b.history("user:alice", 1, 10)).messages == [copy]
    # No copy stream, no seen check: a message to oneself.
    mine = await send_private(nodes.a)("user:alice", envelope(b"note"), None, None)
    assert (mine.seq, mine.duplicate) == (3, False)
    assert [e.seq for e in (await nodes.b.history("user:alice", 0, 10)).messages] == [1, 2, 3]


@pytest_twisted.ensureDeferred
async def test_stopped_backend_refuses_private_messages(nodes: Nodes) -> None:
    from improto.backends.interface import BackendUnavailable

    await nodes.a.stop()
    with pytest.raises(BackendUnavailable):
        await send_private(nodes.a)("user:bob", envelope(), "user:alice", None)
    own = IPrivateBackend(nodes.a, None)
    if own is not None:
        answer = Recorded()
        own.send_private_to(answer, "user:bob", envelope(), "user:alice", None)
        assert answer.results == [] and [f.check(BackendUnavailable) for f in answer.failures] == [BackendUnavailable]


@pytest_twisted.ensureDeferred
async def test_an_answer_of_the_callers_own_gets_each_outcome_once(nodes: Nodes) -> None:
    own = IPrivateBackend(nodes.a, None)

    def send_to(answer: Recorded, *args: Any) -> None:
        """As the router does: the backend's send_private_to, else the plain calls' Deferred."""
        if own is not None:
            own.send_private_to(answer, *args)
        else:
            send_private_in_steps(nodes.a, *args).addCallbacks(answer.callback, answer.errback)

    await nodes.b.subscribe("user:bob", lambda e: None)
    await nodes.a.mark_seen("carol", 0, 60)
    live, stored, nobody = Recorded(), Recorded(), Recorded()
    send_to(live, "user:bob", envelope(b"1"), "user:alice", "bob")
    send_to(stored, "user:carol", envelope(b"2"), "user:alice", "carol")
    send_to(nobody, "user:dave", envelope(b"3"), None, "dave")
    await eventually(lambda: bool(live.results and stored.results and nobody.results))
    assert (live.results, nobody.results) == ([1], [0])
    [appended] = stored.results
    assert (appended.seq, appended.duplicate) == (1, False)
    assert live.failures == stored.failures == nobody.failures == []


@pytest_twisted.ensureDeferred
async def test_a_live_copy_wanted_only_elsewhere_is_skipped_when_nobody_else_subscribes(nodes: Nodes) -> None:
    here: list[Envelope] = []
    there: list[Envelope] = []
    await nodes.b.subscribe("user:bob", lambda e: None)
    await nodes.a.subscribe("user:alice", here.append)
    send = send_private(nodes.a)
    assert await send("user:bob", envelope(b"1"), "user:alice", "bob", copy_only_elsewhere=True) == 1
    await nodes.b.subscribe("user:alice", there.append)
    assert await send("user:bob", envelope(b"2"), "user:alice", "bob", copy_only_elsewhere=True) == 1
    await eventually(lambda: len(there) == 1)
    # A hint: only a backend with its own send_private can count subscribers.
    skips = IPrivateBackend(nodes.a, None) is not None
    await eventually(lambda: len(here) == (1 if skips else 2))
    assert [e.data for e in here] == ([b"2"] if skips else [b"1", b"2"])
    assert [e.data for e in there] == [b"2"]
