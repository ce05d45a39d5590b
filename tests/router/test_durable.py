"""Durable messaging on fakes: seqs, history, resume, gaps, the inbox, idempotent sends."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from improto.backends.interface import HistoryPage, Retention
from improto.backends.memory import MemoryBackend, MemoryHub
from improto.router import Router, RouterLimits
from improto.router.durable import Durability
from improto.testing import FakeClock, FakeLink

#: Every test here with the memory backend's immediate calls and with Deferreds (conftest.py).
pytestmark = pytest.mark.usefixtures("backend_calls")


def make(retention: Retention | None = None, hub: MemoryHub | None = None, backend: Any = None,
         **durability: Any) -> Router:
    backend = backend or MemoryBackend(hub)
    backend.retention = retention or Retention()
    backend.start()
    return Router(backend, clock=FakeClock(), durability=Durability(**durability))


def connect(router: Router, user: str, native: bool = True, resume: str | None = None):
    link = FakeLink()
    session = router.connect(link, user, native=native, resume=resume)
    return link, session


def send(router: Router, session: Any, obj: Any) -> None:
    text = json.dumps(obj, ensure_ascii=False)
    router.receive_text(session, text, len(text.encode("utf-8")))


def say(router: Router, session: Any, *msgs: str, group: str = "lobby") -> None:
    for i, msg in enumerate(msgs):
        send(router, session, {"type": "send", "group": group, "msg": msg, "id": f"{msg}-{i}"})


def messages(frames: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(f["msg"], f["seq"]) for f in frames if f["type"] in ("message", "private")]


class HeldHistory(MemoryBackend):
    """
    Answers history() only when the test says so: a replay 'in flight'.
    ``read_early``: the page is read at the call and its answer delayed (like
    a Redis reply in flight), else read when released.
    """

    def __init__(self, read_early: bool) -> None:
        super().__init__()
        self.read_early = read_early
        self.held: list[tuple[Deferred[HistoryPage], Any]] = []
        self.hold = False

    def history(self, stream, after_seq, limit, before_seq=None):  # type: ignore[override]
        if not self.hold:
            return super().history(stream, after_seq, limit, before_seq)
        d: Deferred[HistoryPage] = Deferred()
        read = super().history
        if self.read_early:
            page = read(stream, after_seq, limit, before_seq)
            self.held.append((d, lambda: page))
        else:
            self.held.append((d, lambda: read(stream, after_seq, limit, before_seq)))
        return d

    def release(self, newest_first: bool = False) -> None:
        self.hold = False
        while self.held:
            d, page = self.held.pop(-1 if newest_first else 0)
            page().chainDeferred(d)


class TestPositions:
    def test_native_frames_carry_stream_and_seq_seed_frames_do_not(self):
        router = make()
        a, sa = connect(router, "alice")
        n, _ = connect(router, "nat")
        s, _ = connect(router, "sam", native=False)
        a.take(), n.take()
        say(router, sa, "one", "two")
        assert [(f["seq"], f["stream"], f["status"]) for f in a.take()] == [
            (1, "group:lobby", "delivered"), (2, "group:lobby", "delivered")]
        assert messages(n.take()) == [("one", 1), ("two", 2)]
        # The seed page gets exactly the frame it always got.
        assert s.frames[0][0] == (
            b'{"type":"message","group":"lobby","sender":"alice","username":"alice",'
            b'"from_user":"alice","msg":"one"}'
        )

    def test_history_off_keeps_the_plain_acks(self):
        router = make(Retention(size=0))
        a, sa = connect(router, "alice")
        n, _ = connect(router, "nat")
        a.take(), n.take()
        say(router, sa, "one")
        assert a.take() == [{"type": "ack", "id": "one-0"}]
        assert "seq" not in n.take()[0]
        send(router, sa, {"type": "history", "group": "lobby", "id": "h"})
        assert a.take()[0]["code"] == "bad_message"


class TestHistory:
    def test_pages_after_and_before(self):
        router = make()
        a, sa = connect(router, "alice")
        say(router, sa, *[f"m{i}" for i in range(1, 8)])
        a.take()
        send(router, sa, {"type": "history", "group": "lobby", "after": 2, "limit": 3, "id": "h1"})
        [page] = a.take()
        assert page["type"] == "history" and page["id"] == "h1" and page["stream"] == "group:lobby"
        assert [(m["msg"], m["seq"]) for m in page["messages"]] == [("m3", 3), ("m4", 4), ("m5", 5)]
        assert (page["first_seq"], page["last_seq"]) == (1, 7)
        send(router, sa, {"type": "history", "group": "lobby", "before": 7, "limit": 2})
        assert [m["seq"] for m in a.take()[0]["messages"]] == [5, 6]
        send(router, sa, {"type": "history", "group": "lobby", "limit": 2})
        assert [m["seq"] for m in a.take()[0]["messages"]] == [6, 7]

    def test_refusals(self):
        router = make(history_page_max=5)
        a, sa = connect(router, "alice")
        a.take()
        for frame, code in [
            ({"type": "history", "group": "lobby", "limit": 6, "id": "1"}, "too_large"),
            ({"type": "history", "group": "dev", "id": "1"}, "not_a_member"),
            ({"type": "history", "group": "lobby", "limit": 0, "id": "1"}, "bad_message"),
            ({"type": "history", "group": "lobby", "after": -1, "id": "1"}, "bad_message"),
            ({"type": "history", "group": "lobby", "after": 1, "before": 3, "id": "1"}, "bad_message"),
            ({"type": "history", "id": "1"}, "bad_message"),
        ]:
            send(router, sa, frame)
            [error] = a.take()
            assert (error["type"], error["code"], error["id"]) == ("error", code, "1"), frame

    def test_private_history_is_the_own_stream(self):
        router = make()
        a, sa = connect(router, "alice")
        b, sb = connect(router, "bob")
        send(router, sa, {"type": "private", "to": "bob", "msg": "hi", "id": "p"})
        send(router, sb, {"type": "history", "private": True, "id": "h"})
        page = b.take()[-1]
        assert page["stream"] == "user:bob" and [m["msg"] for m in page["messages"]] == ["hi"]
        send(router, sa, {"type": "history", "private": True, "id": "h"})
        page = a.take()[-1]
        assert page["stream"] == "user:alice" and [m["to"] for m in page["messages"]] == ["bob"]


class TestResume:
    def test_resume_sends_what_was_missed_in_order_then_resumed(self):
        hub = MemoryHub()
        router = make(hub=hub)
        _, sa = connect(router, "alice")
        say(router, sa, "a", "b", "c", "d")
        n, _ = connect(router, "nat", resume="group:lobby:1")
        frames = n.take()
        assert messages(frames) == [("b", 2), ("c", 3), ("d", 4)]
        assert frames[-1] == {"type": "resumed", "streams": {"group:lobby": 4}}

    @pytest.mark.parametrize("read_early", [True, False])
    def test_live_messages_during_the_replay_wait_and_are_not_duplicated(self, read_early):
        backend = HeldHistory(read_early)
        router = make(backend=backend, history_page_max=10)
        _, sa = connect(router, "alice")
        say(router, sa, "a", "b", "c")
        backend.hold = True
        n, sn = connect(router, "nat")
        n.take()
        send(router, sn, {"type": "resume", "streams": {"group:lobby": 0}, "id": "r"})
        say(router, sa, "d", "e")  # live while the replay is in flight
        assert messages(n.take()) == []
        backend.release()
        frames = n.take()
        assert messages(frames) == [("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)]
        assert frames[-1] == {"type": "resumed", "streams": {"group:lobby": 5}, "id": "r"}
        say(router, sa, "f")
        assert messages(n.take()) == [("f", 6)]

    def test_gap_when_history_no_longer_reaches_back(self):
        router = make(Retention(size=3))
        _, sa = connect(router, "alice")
        say(router, sa, *[f"m{i}" for i in range(1, 11)])
        n, _ = connect(router, "nat", resume="group:lobby:2")
        frames = n.take()
        gap = [f for f in frames if f["type"] == "gap"]
        assert gap == [{"type": "gap", "stream": "group:lobby", "from_seq": 3, "to_seq": 7}]
        assert frames.index(gap[0]) < frames.index(next(f for f in frames if f["type"] == "message"))
        assert messages(frames) == [("m8", 8), ("m9", 9), ("m10", 10)]

    def test_age_trims_history_too(self):
        hub = MemoryHub()
        clock = FakeClock()
        hub.streams.clock = clock
        router = make(Retention(size=100, age=60), hub=hub)
        _, sa = connect(router, "alice")
        say(router, sa, "old")
        clock.advance(61)
        say(router, sa, "new")
        n, _ = connect(router, "nat", resume="group:lobby:0")
        frames = n.take()
        assert [f for f in frames if f["type"] == "gap"][0]["to_seq"] == 1
        assert messages(frames) == [("new", 2)]

    def test_resume_errors(self):
        router = make()
        _, sa = connect(router, "alice")
        say(router, sa, "a")
        n, sn = connect(router, "nat")
        n.take()
        for frame, code in [
            ({"type": "resume", "streams": {"group:lobby": 5}, "id": "r"}, "bad_resume"),
            ({"type": "resume", "streams": {"group:dev": 0}, "id": "r"}, "not_a_member"),
            ({"type": "resume", "streams": {"user:alice": 0}, "id": "r"}, "not_a_member"),
            ({"type": "resume", "streams": {"lobby": 0}, "id": "r"}, "bad_message"),
            ({"type": "resume", "streams": {"group:lobby": "x"}, "id": "r"}, "bad_message"),
            ({"type": "resume", "streams": [], "id": "r"}, "bad_message"),
        ]:
            send(router, sn, frame)
            errors = [f for f in n.take() if f["type"] == "error"]
            assert [(e["code"], e.get("id")) for e in errors] == [(code, "r")], frame
        send(router, sn, {"type": "resume", "streams": {"group:lobby": 0}, "id": "r"})
        assert n.take()[-1]["type"] == "resumed"
        send(router, sn, {"type": "resume", "streams": {"group:lobby": 0}, "id": "r"})
        assert [f["code"] for f in n.take()] == ["bad_message"]  # once per connection
        m, _ = connect(router, "max", resume="group:lobby")
        assert m.take()[-1]["code"] == "bad_message"
        s, _ = connect(router, "sam", native=False, resume="group:lobby:0")
        assert s.take()[-1]["code"] == "bad_message"

    def test_hole_in_live_delivery_is_filled_from_history(self):
        hub = MemoryHub()
        router = make(hub=hub)
        n, _ = connect(router, "nat")
        _, sa = connect(router, "alice")
        n.take()
        say(router, sa, "a")
        # Lose seq 2 on its way to this node, as a Redis reconnect would.
        callbacks = hub.channels["group:lobby"]
        [(node, callback)] = callbacks.items()
        callbacks[node] = lambda env: None if env.seq == 2 else callback(env)
        say(router, sa, "b")
        callbacks[node] = callback
        say(router, sa, "c")
        assert messages(n.take()) == [("a", 1), ("b", 2), ("c", 3)]


    @pytest.mark.parametrize("newest_first", [False, True])
    def test_a_resume_during_a_hole_repair_sends_each_message_once(self, newest_first):
        backend = HeldHistory(read_early=False)
        router = make(backend=backend)
        n, _ = connect(router, "nat")
        _, sa = connect(router, "alice")
        say(router, sa, "a")
        callbacks = backend.hub.channels["group:lobby"]
        [(node, callback)] = callbacks.items()
        callbacks[node] = lambda env: None if env.seq == 2 else callback(env)
        say(router, sa, "b")
        callbacks[node] = callback
        backend.hold = True
        say(router, sa, "c")  # the node sees the hole; its repair waits
        m, _ = connect(router, "max", resume="group:lobby:0")
        backend.release(newest_first)
        say(router, sa, "d")
        assert messages(n.take()) == [("a", 1), ("b", 2), ("c", 3), ("d", 4)]
        assert messages(m.take()) == [("a", 1), ("b", 2), ("c", 3), ("d", 4)]


    def test_a_stream_that_restarts_from_1_is_delivered_again(self):
        """Redis restarted without persistence: seqs start over, nothing is dropped."""
        hub = MemoryHub()
        router = make(hub=hub)
        n, _ = connect(router, "nat", resume="group:lobby:0")
        _, sa = connect(router, "alice")
        say(router, sa, "a", "b")
        assert messages(n.take()) == [("a", 1), ("b", 2)]
        hub.streams.streams.clear()
        say(router, sa, "c", "d")
        assert messages(n.take()) == [("c", 1), ("d", 2)]


class TestInbox:
    def test_private_to_an_offline_known_user_is_stored_then_delivered(self):
        router = make()
        b, sb = connect(router, "bob")
        say(router, sb, "hello")
        b.take()
        router.disconnect(sb)
        a, sa = connect(router, "alice")
        a.take()
        send(router, sa, {"type": "private", "to": "bob", "msg": "while away", "id": "p1"})
        assert a.take() == [{"type": "ack", "id": "p1", "seq": 1, "stream": "user:bob", "status": "stored"}]
        send(router, sa, {"type": "private", "to": "zed", "msg": "?", "id": "p2"})
        [error] = a.take()
        assert (error["code"], error["id"]) == ("unknown_user", "p2")
        b2, _ = connect(router, "bob")
        assert messages(b2.take()) == [("while away", 1)]

    def test_inbox_starts_after_what_was_delivered(self):
        router = make()
        b, sb = connect(router, "bob")
        _, sa = connect(router, "alice")
        send(router, sa, {"type": "private", "to": "bob", "msg": "seen live", "id": "1"})
        assert messages(b.take()) == [("seen live", 1)]
        router.disconnect(sb)
        send(router, sa, {"type": "private", "to": "bob", "msg": "missed", "id": "2"})
        b2, _ = connect(router, "bob")
        assert messages(b2.take()) == [("missed", 2)]

    def test_a_resume_that_does_not_name_the_private_stream_still_gets_the_inbox(self):
        router = make()
        b, sb = connect(router, "bob")
        a, sa = connect(router, "alice")
        say(router, sa, "g1")
        assert messages(b.take()) == [("g1", 1)]
        router.disconnect(sb)
        say(router, sa, "g2")
        send(router, sa, {"type": "private", "to": "bob", "msg": "p1", "id": "p"})
        b2, _ = connect(router, "bob", resume="group:lobby:1")
        frames = b2.take()
        assert sorted(messages(frames)) == [("g2", 2), ("p1", 1)]
        assert frames[-1]["type"] in ("resumed", "private")

    def test_inbox_lifetime(self):
        hub = MemoryHub()
        clock = FakeClock()
        hub.streams.clock = clock
        router = make(hub=hub, inbox_ttl=100)
        _, sb = connect(router, "bob")
        router.disconnect(sb)
        a, sa = connect(router, "alice")
        a.take()
        clock.advance(101)
        send(router, sa, {"type": "private", "to": "bob", "msg": "too late", "id": "p"})
        assert a.take()[0]["code"] == "unknown_user"

    def test_sender_copy_goes_to_its_own_stream(self):
        router = make()
        a1, sa = connect(router, "alice")
        a2, _ = connect(router, "alice")
        connect(router, "bob")
        a1.take(), a2.take()
        send(router, sa, {"type": "private", "to": "bob", "msg": "x", "id": "p"})
        [copy] = a2.take()
        assert (copy["type"], copy["stream"], copy["seq"], copy["to"]) == ("private", "user:alice", 1, "bob")


class TestIdempotency:
    def test_a_retried_send_is_acked_again_and_delivered_once(self):
        hub = MemoryHub()
        router1, router2 = make(hub=hub), make(hub=hub)
        n, _ = connect(router1, "nat")
        a, sa = connect(router1, "alice")
        a2, sa2 = connect(router2, "alice")  # the retry comes in on another node
        n.take(), a.take(), a2.take()
        frame = {"type": "send", "group": "lobby", "msg": "once", "id": "same"}
        send(router1, sa, frame)
        send(router2, sa2, frame)
        assert a.take() == [{"type": "ack", "id": "same", "seq": 1, "stream": "group:lobby", "status": "delivered"}]
        assert [f for f in a2.take() if f["type"] == "ack"] == [
            {"type": "ack", "id": "same", "seq": 1, "stream": "group:lobby", "status": "delivered"}]
        assert messages(n.take()) == [("once", 1)]

    def test_private_retry_and_window(self):
        hub = MemoryHub()
        clock = FakeClock()
        hub.streams.clock = clock
        router = make(hub=hub, idempotency_window=10)
        b, _ = connect(router, "bob")
        a, sa = connect(router, "alice")
        b.take(), a.take()
        frame = {"type": "private", "to": "bob", "msg": "once", "id": "same"}
        send(router, sa, frame)
        send(router, sa, frame)
        assert [f["seq"] for f in a.take()] == [1, 1]
        assert messages(b.take()) == [("once", 1)]
        clock.advance(11)
        send(router, sa, frame)
        assert [f["seq"] for f in a.take()] == [2]
        assert messages(b.take()) == [("once", 2)]


class TestPagesFitOneFrame:
    """A history page over ``RouterLimits.max_frame_size`` would be refused by Autobahn (and clients)."""

    def make(self) -> Router:
        backend = MemoryBackend()
        backend.start()
        # Frames up to 4,000 bytes; ten messages of 900 need about 10 KB.
        return Router(backend, clock=FakeClock(), limits=RouterLimits(max_message_size=1000))

    def fill(self, router: Router, session: Any) -> None:
        for i in range(10):
            send(router, session, {"type": "send", "group": "lobby", "msg": f"{i}" * 900, "id": f"m{i}"})

    def page(self, router: Router, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        link, session = connect(router, "nat")
        link.take()
        send(router, session, {"type": "history", "group": "lobby", "id": "h", **request})
        [(data, _)] = link.frames
        return len(data), json.loads(data)

    def test_after_gets_the_oldest_that_fit_and_pages_on(self):
        router = self.make()
        _, sa = connect(router, "alice")
        self.fill(router, sa)
        size, page = self.page(router, {"after": 0, "limit": 10})
        seqs = [m["seq"] for m in page["messages"]]
        assert size <= router.limits.max_frame_size and seqs == list(range(1, len(seqs) + 1))
        assert 3 <= len(seqs) < 10 and (page["first_seq"], page["last_seq"]) == (1, 10)
        size, page = self.page(router, {"after": seqs[-1], "limit": 10})
        assert size <= router.limits.max_frame_size and page["messages"][0]["seq"] == seqs[-1] + 1

    def test_before_gets_the_newest_that_fit(self):
        router = self.make()
        _, sa = connect(router, "alice")
        self.fill(router, sa)
        size, page = self.page(router, {"limit": 10})
        seqs = [m["seq"] for m in page["messages"]]
        assert size <= router.limits.max_frame_size and seqs == list(range(11 - len(seqs), 11))
        assert 3 <= len(seqs) < 10

    def test_a_page_that_fits_is_whole(self):
        router = self.make()
        _, sa = connect(router, "alice")
        say(router, sa, *[f"m{i}" for i in range(10)])
        _, page = self.page(router, {"after": 0, "limit": 10})
        assert [m["seq"] for m in page["messages"]] == list(range(1, 11))
