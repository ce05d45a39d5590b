"""The memory backend's IImmediateBackend calls: its Deferred calls' answers, at once."""

from __future__ import annotations

from typing import Any

import pytest
from zope.interface.verify import verifyObject

from improto.backends.interface import BackendUnavailable, Envelope, IImmediateBackend
from improto.backends.memory import MemoryBackend, MemoryHub


def fired(d: Any) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    return out[0]


def test_the_immediate_calls_do_what_the_deferred_ones_do() -> None:
    hub = MemoryHub()
    a, b = MemoryBackend(hub), MemoryBackend(hub)
    for node in (a, b):
        node.start()
    assert verifyObject(IImmediateBackend, a)
    heard: list[Envelope] = []
    b.subscribe("user:bob", heard.append)
    env = Envelope(a.node_id, "s1", b"hi")
    assert a.publish_now("user:bob", env) == 1 == fired(a.publish("user:bob", env))
    assert a.publish_now("user:nobody", env) == 0
    assert a.send_private_now("user:bob", env, "user:alice", "bob", "k", 60) == 1  # unseen: live
    a.mark_seen("bob", 2, 60)
    first = a.send_private_now("user:bob", env, "user:alice", "bob", "k", 60)
    again = a.send_private_now("user:bob", env, "user:alice", "bob", "k", 60)
    other = fired(a.send_private("user:bob", env, None, None))
    assert (first.seq, first.receivers, first.duplicate) == (1, 1, False)
    assert (again.seq, again.duplicate) == (1, True) and other.seq == 2
    assert [(e.stream, e.seq) for e in heard] == [
        (None, None), (None, None), (None, None), ("user:bob", 1), ("user:bob", 2)]
    assert fired(a.send_private("user:carol", env, None, "carol")) == 0

def test_subscriptions_and_presence_at_once() -> None:
    hub = MemoryHub()
    a, b = MemoryBackend(hub), MemoryBackend(hub)
    for node in (a, b):
        node.start()
    heard: list[Envelope] = []
    a.subscribe_now("group:x", heard.append)
    assert a.subscribers_now("group:x") == 1
    fired(b.subscribe("group:x", heard.append))
    assert b.publish_now("group:x", Envelope(b.node_id, "s", b"1")) == 2 == len(heard)
    a.unsubscribe_now("group:x")
    assert a.subscribers_now("group:x") == 1
    assert a.presence_add_now("online", "bob") is True  # first anywhere
    assert fired(b.presence_add("online", "bob")) is False
    assert a.presence_add_now("online", "bob") is False
    assert a.presence_remove_now("online", "bob") is False  # still on b
    assert fired(b.presence_remove("online", "bob")) is True
    assert a.presence_remove_now("online", "bob") is False
    assert fired(a.presence_members("online")) == []


def test_a_stopped_backend_raises_what_its_deferreds_fail_with() -> None:
    backend = MemoryBackend()
    backend.start()
    backend.stop()
    env = Envelope(backend.node_id, "s1", b"hi")
    with pytest.raises(BackendUnavailable):
        backend.publish_now("user:bob", env)
    with pytest.raises(BackendUnavailable):
        backend.send_private_now("user:bob", env, None, None)
    assert fired(backend.publish("user:bob", env)).check(BackendUnavailable)
    assert fired(backend.append("user:bob", "user:bob", env)).check(BackendUnavailable)
    assert fired(backend.send_private("user:bob", env, None, None)).check(BackendUnavailable)
    with pytest.raises(BackendUnavailable):
        backend.subscribe_now("group:x", print)
    for call in (backend.presence_add_now, backend.presence_remove_now):
        with pytest.raises(BackendUnavailable):
            call("online", "bob")
    assert fired(backend.presence_add("online", "bob")).check(BackendUnavailable)
