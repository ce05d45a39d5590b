"""The router on fakes: who receives what, in both dialects, on one node and two."""

from __future__ import annotations

import json

import pytest
from twisted.internet.defer import Deferred
from zope.interface import implementer_only

from improto.backends.interface import IBackend, IPrivateBackend
from improto.backends.memory import MemoryBackend, MemoryHub
from improto.router import Router, RouterLimits
from tests.fakes import FakeClock, FakeLink, make_router

#: Every test here with the memory backend's immediate calls and with Deferreds (conftest.py).
pytestmark = pytest.mark.usefixtures("backend_calls")


def connect(router, user, native=False):
    link = FakeLink()
    session = router.connect(link, user, native=native)
    return link, session


def send(router, session, obj):
    text = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    router.receive_text(session, text, len(text.encode("utf-8")))


@pytest.fixture
def router():
    return make_router()


class TestSeedDialect:
    def test_group_message_reaches_everyone_but_the_sender(self, router):
        a, sa = connect(router, "小二")
        b, _ = connect(router, "bob")
        c, _ = connect(router, "carol")
        send(router, sa, {"username": "someone-else", "msg": "你好"})
        expected = {"type": "message", "group": "lobby", "sender": "小二", "username": "小二", "from_user": "小二", "msg": "你好"}
        assert b.take() == [expected]
        assert c.take() == [expected]
        assert a.take() == []

    @pytest.mark.parametrize(
        "frame, msg",
        [("just text", "just text"), ("[1, 2]", "[1, 2]"), ('{"x": 1}', '{"x": 1}'), ("42", "42")],
    )
    def test_other_frames_go_to_the_lobby_verbatim(self, router, frame, msg):
        _, sa = connect(router, "alice")
        b, _ = connect(router, "bob")
        send(router, sa, frame)
        assert b.take() == [
            {"type": "message", "group": "lobby", "sender": "alice", "username": "alice", "from_user": "alice", "msg": msg}
        ]

    def test_private_message_reaches_every_session_of_the_recipient(self, router):
        _, sa = connect(router, "alice")
        b1, _ = connect(router, "bob")
        b2, _ = connect(router, "bob")
        c, _ = connect(router, "carol")
        send(router, sa, {"to_user": "bob", "msg": "psst"})
        expected = {"type": "private", "sender": "alice", "username": "alice", "from_user": "alice", "to": "bob", "msg": "psst"}
        assert b1.take() == [expected]
        assert b2.take() == [expected]
        assert c.take() == []

    def test_unknown_recipient_gets_a_readable_error_and_nothing_else(self, router):
        a, sa = connect(router, "alice")
        b, _ = connect(router, "bob")
        send(router, sa, {"to_user": "nobody", "msg": "hello?"})
        [error] = a.take()
        assert error["type"] == "error"
        assert error["code"] == "unknown_user"
        # What the seed pages print: "<username/from_user/sender> : <msg>".
        assert error["username"] == error["from_user"] == error["sender"] == "improto"
        assert "nobody" in error["msg"] and "not online" in error["msg"]
        assert b.take() == []

    def test_seed_sessions_get_no_presence_acks_or_copies(self, router):
        a, sa = connect(router, "alice")
        a_phone, _ = connect(router, "alice")
        connect(router, "bob")
        send(router, sa, {"to_user": "bob", "msg": "hi"})
        assert a.take() == []
        assert a_phone.take() == []

    def test_sending_to_oneself_reaches_ones_other_sessions(self, router):
        _, sa = connect(router, "alice")
        other, _ = connect(router, "alice")
        send(router, sa, {"to_user": "alice", "msg": "note to self"})
        assert [f["msg"] for f in other.take()] == ["note to self"]


class TestNativeDialect:
    def test_welcome_then_presence_of_others(self, router):
        n, _ = connect(router, "nat", native=True)
        [welcome] = n.take()
        assert welcome["type"] == "welcome" and welcome["user"] == "nat"
        assert welcome["groups"] == ["lobby"]
        connect(router, "bob")
        assert n.take() == [
            {"type": "presence", "event": "online", "user": "bob"},
            {"type": "presence", "event": "join", "user": "bob", "group": "lobby"},
        ]

    def test_send_to_a_group_is_acked_and_delivered(self, router):
        n, sn = connect(router, "nat", native=True)
        m, sm = connect(router, "max", native=True)
        send(router, sn, {"type": "join", "group": "dev", "id": "j1"})
        send(router, sm, {"type": "join", "group": "dev", "id": "j2"})
        n.take(), m.take()
        send(router, sn, {"type": "send", "group": "dev", "msg": "build is green", "id": 7})
        assert n.take() == [{"type": "ack", "id": "7", "seq": 1, "stream": "group:dev", "status": "delivered"}]
        assert m.take() == [
            {"type": "message", "group": "dev", "sender": "nat", "username": "nat", "from_user": "nat",
             "msg": "build is green", "stream": "group:dev", "seq": 1}
        ]

    def test_join_leave_presence_and_who(self, router):
        n, sn = connect(router, "nat", native=True)
        m, sm = connect(router, "max", native=True)
        send(router, sn, {"type": "join", "group": "dev", "id": "1"})
        n.take(), m.take()
        send(router, sm, {"type": "join", "group": "dev", "id": "2"})
        assert n.take() == [{"type": "presence", "event": "join", "user": "max", "group": "dev"}]
        assert m.take() == [{"type": "ack", "id": "2"}]
        send(router, sm, {"type": "who", "group": "dev", "id": "3"})
        assert m.take() == [{"type": "who", "group": "dev", "users": ["max", "nat"], "id": "3"}]
        send(router, sm, {"type": "leave", "group": "dev", "id": "4"})
        assert n.take() == [{"type": "presence", "event": "leave", "user": "max", "group": "dev"}]
        assert m.take() == [{"type": "ack", "id": "4"}]

    def test_who_of_a_group_too_big_for_one_frame_is_cut_to_fit(self):
        router = make_router(limits=RouterLimits(max_message_size=100))  # frames up to 1,124 bytes
        for i in range(200):
            link, session = connect(router, f"member{i:03d}", native=True)
            send(router, session, {"type": "join", "group": "big", "id": "j"})
        link.take()
        send(router, session, {"type": "who", "group": "big", "id": "w"})
        [(data, _)] = link.frames
        reply = json.loads(data)
        assert len(data) <= router.limits.max_frame_size and reply["truncated"] is True
        assert reply["users"] == [f"member{i:03d}" for i in range(len(reply["users"]))]

    def test_sending_to_a_group_one_is_not_in_is_refused(self, router):
        n, sn = connect(router, "nat", native=True)
        n.take()
        send(router, sn, {"type": "send", "group": "secret", "msg": "hi", "id": "9"})
        [error] = n.take()
        assert error["code"] == "not_a_member" and error["id"] == "9"
        assert "msg" not in error  # native errors carry reason, not a chat line

    def test_private_copy_goes_to_senders_other_native_sessions(self, router):
        laptop, s_laptop = connect(router, "nat", native=True)
        phone, _ = connect(router, "nat", native=True)
        bob, _ = connect(router, "bob")
        laptop.take(), phone.take()
        send(router, s_laptop, {"type": "private", "to": "bob", "msg": "hi", "id": "p1"})
        expected = {"type": "private", "sender": "nat", "username": "nat", "from_user": "nat", "to": "bob", "msg": "hi"}
        assert bob.take() == [expected]
        assert phone.take() == [expected]
        assert laptop.take() == [{"type": "ack", "id": "p1"}]

    @pytest.mark.parametrize(
        "frame, code",
        [
            ({"type": "dance", "id": "1"}, "unknown_type"),
            ({"type": "send", "msg": "no group", "id": "1"}, "bad_message"),
            ({"type": "send", "group": "lobby", "id": "1"}, "bad_message"),
            ({"type": "private", "msg": "to whom?", "id": "1"}, "bad_message"),
            ({"type": "join", "group": "", "id": "1"}, "bad_name"),
            ({"type": "join", "group": "tab\there", "id": "1"}, "bad_name"),
            ({"type": "join", "group": "x" * 65, "id": "1"}, "bad_name"),
            ({"type": "send", "group": "lobby", "msg": "x", "id": {"no": 1}}, "bad_message"),
            ({"type": "private", "to": "ghost", "msg": "boo", "id": "1"}, "unknown_user"),
        ],
    )
    def test_bad_requests_get_precise_errors_and_the_session_lives_on(self, router, frame, code):
        n, sn = connect(router, "nat", native=True)
        b, _ = connect(router, "bob")
        n.take()
        send(router, sn, frame)
        [error] = n.take()
        assert error["type"] == "error" and error["code"] == code, error
        assert error["reason"]
        if code != "bad_message" or frame.get("id") == "1":
            assert error.get("id") == "1"
        send(router, sn, {"type": "send", "group": "lobby", "msg": "still here", "id": "2"})
        assert [(f["type"], f["id"]) for f in n.take()] == [("ack", "2")]
        assert [f["msg"] for f in b.take()] == ["still here"]

    def test_a_seed_route_session_speaking_native_gets_native_replies(self, router):
        s, ss = connect(router, "sam")
        send(router, ss, {"type": "join", "group": "dev", "id": "1"})
        assert s.take() == [{"type": "ack", "id": "1"}]


class TestLimits:
    def test_too_large_message_is_refused_readably(self):
        router = make_router(limits=RouterLimits(max_message_size=10))
        a, sa = connect(router, "alice")
        b, _ = connect(router, "bob")
        send(router, sa, "x" * 11)
        [error] = a.take()
        assert error["code"] == "too_large" and "11 bytes" in error["msg"]
        send(router, sa, {"type": "send", "group": "lobby", "msg": "long", "id": "big"})
        [error] = a.take()
        assert error["code"] == "too_large" and error["id"] == "big"
        assert b.take() == []
        send(router, sa, "x" * 10)
        assert [f["msg"] for f in b.take()] == ["x" * 10]

    def test_flood_is_rate_limited_and_recovers(self):
        clock = FakeClock()
        router = make_router(limits=RouterLimits(rate=2, burst=3), clock=clock)
        a, sa = connect(router, "alice", native=True)
        b, _ = connect(router, "bob")
        a.take()
        for i in range(5):
            send(router, sa, {"type": "send", "group": "lobby", "msg": str(i), "id": str(i)})
        frames = a.take()
        assert [f["type"] for f in frames] == ["ack"] * 3 + ["error"] * 2
        assert {f["code"] for f in frames[3:]} == {"rate_limited"}
        assert [f["id"] for f in frames[3:]] == ["3", "4"]
        assert [f["msg"] for f in b.take()] == ["0", "1", "2"]
        clock.now += 1.0
        send(router, sa, {"type": "send", "group": "lobby", "msg": "later", "id": "5"})
        assert [(f["type"], f["id"], f["seq"]) for f in a.take()] == [("ack", "5", 4)]

    def test_binary_frames_are_refused_on_chat_routes(self, router):
        a, sa = connect(router, "alice")
        router.receive_binary(sa, b"\x00\x01")
        [error] = a.take()
        assert error["code"] == "binary_not_supported"

    def test_bad_input_is_logged_once_per_session_and_code(self, router, caplog_events):
        a, sa = connect(router, "alice")
        for _ in range(50):
            router.receive_binary(sa, b"\x00")
        assert len(a.take()) == 50
        refused = [e["code"] for e in caplog_events if "Refused a frame" in e.get("log_format", "")]
        # Binary frames cost rate tokens too: after the burst, rate_limited.
        assert sorted(refused) == ["binary_not_supported", "rate_limited"]


class TestDelivery:
    def test_a_broadcast_is_encoded_once_for_all_members(self, router):
        _, sa = connect(router, "alice")
        links = [connect(router, f"user{i}")[0] for i in range(20)]
        send(router, sa, "hello all")
        frames = [link.frames[-1][0] for link in links]
        assert all(frame is frames[0] for frame in frames)
        assert all(link.broadcasts == 1 for link in links)

    def test_echo_sessions_get_their_own_frames_back_text_and_binary(self, router):
        link = FakeLink()
        session = router.connect_echo(link)
        other = FakeLink()
        router.connect_echo(other)
        router.receive_text(session, "ping ✓", 8)
        router.receive_binary(session, b"\x00\xff")
        assert link.frames == [("ping ✓".encode(), False), (b"\x00\xff", True)]
        assert other.frames == []

    def test_disconnect_announces_offline_only_after_the_last_session(self, router):
        n, _ = connect(router, "nat", native=True)
        _, b1 = connect(router, "bob")
        _, b2 = connect(router, "bob")
        n.take()
        router.disconnect(b1)
        assert n.take() == []
        router.disconnect(b2)
        assert n.take() == [
            {"type": "presence", "event": "leave", "user": "bob", "group": "lobby"},
            {"type": "presence", "event": "offline", "user": "bob"},
        ]
        assert len(router.sessions) == 1

    def test_backend_failure_becomes_an_error_frame(self, router):
        a, sa = connect(router, "alice", native=True)
        a.take()
        router.backend.stop()
        send(router, sa, {"type": "send", "group": "lobby", "msg": "lost?", "id": "1"})
        [error] = a.take()
        assert error["code"] == "backend_unavailable" and error["id"] == "1"

    @pytest.mark.parametrize("bob_native", [True, False])  # stored (append) or live (publish)
    def test_backend_failure_of_a_private_message_is_an_error_frame(self, router, bob_native):
        a, sa = connect(router, "alice", native=True)
        b, _ = connect(router, "bob", native=bob_native)
        a.take()
        router.backend.stop()
        send(router, sa, {"type": "private", "to": "bob", "msg": "lost?", "id": "1"})
        [error] = a.take()
        assert error["code"] == "backend_unavailable" and error["id"] == "1"
        assert "temporarily unavailable" in error["reason"]

    @pytest.mark.parametrize("bob_native", [True, False])
    def test_private_messages_skip_deferreds_on_an_immediate_backend(
        self, router, backend_calls, bob_native, monkeypatch
    ):
        a, sa = connect(router, "alice", native=True)
        a2, _ = connect(router, "alice", native=True)
        b, _ = connect(router, "bob", native=bob_native)
        for link in (a, a2, b):
            link.take()
        calls = []
        for name in ("publish", "append", "last_seen", "send_private", "send_private_to"):
            original = getattr(router.backend, name)
            monkeypatch.setattr(router.backend, name,
                                lambda *args, _o=original, _n=name: calls.append(_n) or _o(*args))
        send(router, sa, {"type": "private", "to": "bob", "msg": "hi", "id": "1"})
        assert [f["msg"] for f in b.take()] == ["hi"]
        assert [f["msg"] for f in a2.take()] == ["hi"]  # the sender's other device
        assert [f["type"] for f in a.take()] == ["ack"]
        assert (calls == []) == (backend_calls == "immediate")

    @pytest.mark.parametrize("where", ["nowhere", "here", "other node"])
    def test_the_senders_copy_is_skipped_only_when_it_reaches_nobody(
        self, where, backend_calls, monkeypatch
    ):
        hub = MemoryHub()
        here, there = make_router(hub), make_router(hub)
        _, sa = connect(here, "alice")  # a seed page: it gets no copy itself
        b, _ = connect(here, "bob")
        other = FakeLink()
        if where != "nowhere":
            other, _ = connect(here if where == "here" else there, "alice", native=True)
        other.take()
        copies = []  # what reaches this node's subscription of the sender's channel
        listeners = hub.channels["user:alice"]
        node = here.backend.node_id
        listeners[node] = lambda e, _heard=listeners[node]: copies.append(e) or _heard(e)
        send(here, sa, {"to_user": "bob", "msg": "hi"})
        assert [f["msg"] for f in b.take()] == ["hi"]
        assert [f["msg"] for f in other.take()] == ([] if where == "nowhere" else ["hi"])
        if backend_calls == "immediate":
            assert len(copies) == (0 if where == "nowhere" else 1)

    def test_server_side_publish_to_group_and_user(self, router):
        a, _ = connect(router, "alice")
        b, _ = connect(router, "bob")
        router.publish({"cid": "1", "count": 5}, group="lobby")
        router.publish("just for bob", user="bob")
        assert a.take() == [{"cid": "1", "count": 5}]
        assert b.frames == [(b'{"cid":"1","count":5}', False), (b"just for bob", False)]
        with pytest.raises(TypeError):
            router.publish("x")

    def test_listeners_receive_a_groups_feed_and_are_nobody(self, router):
        n, sn = connect(router, "nat", native=True)
        viewer = FakeLink()
        listener = router.connect_listener(viewer, "votes")
        router.publish({"cid": "1", "count": 1}, group="votes")
        assert viewer.take() == [{"cid": "1", "count": 1}]
        send(router, sn, {"type": "who", "group": "votes", "id": "w"})
        assert n.take()[-1]["users"] == []
        router.disconnect(listener)
        router.publish({"cid": "1", "count": 2}, group="votes")
        assert viewer.take() == []

    def test_close_all_uses_1001(self, router):
        a, _ = connect(router, "alice")
        router.close_all()
        assert a.closed_with == (1001, "server is shutting down")


class TestTwoNodes:
    """Two routers on one hub behave as one server."""

    @pytest.fixture
    def nodes(self):
        hub = MemoryHub()
        return make_router(hub), make_router(hub)

    def test_group_message_crosses_nodes_without_echo(self, nodes):
        one, two = nodes
        a, sa = connect(one, "alice")
        a_phone, _ = connect(two, "alice")
        b, _ = connect(two, "bob")
        send(one, sa, "hi")
        assert a.take() == []
        assert [f["msg"] for f in a_phone.take()] == ["hi"]
        assert [f["msg"] for f in b.take()] == ["hi"]

    def test_private_messages_and_unknown_user_across_nodes(self, nodes):
        one, two = nodes
        a, sa = connect(one, "alice")
        b, _ = connect(two, "bob")
        send(one, sa, {"to_user": "bob", "msg": "over there"})
        assert [f["msg"] for f in b.take()] == ["over there"]
        send(one, sa, {"to_user": "carol", "msg": "?"})
        assert [f["code"] for f in a.take()] == ["unknown_user"]

    def test_presence_is_announced_once_for_the_cluster(self, nodes):
        one, two = nodes
        n, sn = connect(one, "nat", native=True)
        n.take()
        connect(one, "bob")
        connect(two, "bob")
        assert [f["event"] for f in n.take()] == ["online", "join"]
        send(one, sn, {"type": "who", "group": "lobby", "id": "w"})
        assert n.take()[0]["users"] == ["bob", "nat"]


    def test_presence_reaches_a_native_member_on_another_node(self, nodes):
        one, two = nodes
        n, _ = connect(two, "nat", native=True)
        n.take()
        _, sb = connect(one, "bob")  # node one has no native session
        one.disconnect(sb)
        assert [(f["event"], f["user"]) for f in n.take()] == [
            ("online", "bob"), ("join", "bob"), ("leave", "bob"), ("offline", "bob")]


class TestAnnouncementsNobodyHears:
    """
    On a backend that answers at once, presence that no node could deliver
    (no native session here, no other node subscribed) is not even encoded.
    """

    @pytest.fixture
    def encoded(self, monkeypatch):
        from improto.router import presence

        events: list[str] = []
        real = presence.codec.presence

        def counting(event, user, group=None):
            events.append(event)
            return real(event, user, group)

        monkeypatch.setattr(presence.codec, "presence", counting)
        return events

    def test_seed_sessions_alone_cost_no_announcement(self, encoded, backend_calls):
        router = make_router()
        _, a = connect(router, "alice")
        _, b = connect(router, "bob")
        router.disconnect(a)
        router.disconnect(b)
        # With a Deferred backend (Redis) another node may listen: always announced.
        assert encoded == ([] if backend_calls == "immediate" else ["online", "join"] * 2 + ["leave", "offline"] * 2)

    def test_a_native_session_here_hears_them_again(self, encoded):
        router = make_router()
        n, _ = connect(router, "nat", native=True)
        n.take()
        _, b = connect(router, "bob")
        router.disconnect(b)
        assert [f["event"] for f in n.take()] == ["online", "join", "leave", "offline"]


@implementer_only(IBackend, IPrivateBackend)
class SlowSubscribeBackend(MemoryBackend):
    """
    Subscriptions become active only when the test says so, as over a
    network (so it does not answer at once: no ``IImmediateBackend``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Deferred[None]] = []
        self.subscribe_calls: list[str] = []
        self.unsubscribe_calls: list[str] = []

    def subscribe(self, channel, callback):
        self.subscribe_calls.append(channel)
        super().subscribe(channel, callback)
        d: Deferred[None] = Deferred()
        self.pending.append(d)
        return d

    def unsubscribe(self, channel):
        self.unsubscribe_calls.append(channel)
        return super().unsubscribe(channel)

    def activate(self) -> None:
        pending, self.pending = self.pending, []
        for d in pending:
            d.callback(None)


class TestPreparedConnections:
    @pytest.fixture
    def backend(self):
        backend = SlowSubscribeBackend()
        backend.start()
        return backend

    def test_a_connection_is_ready_only_once_its_channels_are_subscribed(self, backend):
        router = Router(backend, clock=FakeClock())
        tickets = []
        router.prepare("alice").addCallback(tickets.append)
        assert tickets == []
        assert sorted(backend.subscribe_calls) == ["group:lobby", "user:alice"]
        backend.activate()
        [ticket] = tickets
        link = FakeLink()
        session = router.connect(link, "alice", native=False, ticket=ticket)
        # The ticket's subscriptions are adopted, not made twice.
        assert sorted(backend.subscribe_calls) == ["group:lobby", "user:alice"]
        router.disconnect(session)
        assert sorted(backend.unsubscribe_calls) == ["group:lobby", "user:alice"]

    def test_a_cancelled_ticket_gives_its_subscriptions_back(self, backend):
        router = Router(backend, clock=FakeClock())
        tickets = []
        router.prepare(None).addCallback(tickets.append)
        backend.activate()
        router.cancel(tickets[0])
        assert backend.unsubscribe_calls == backend.subscribe_calls
        assert backend.subscribe_calls[0].startswith("echo:")

    def test_channels_shared_by_sessions_are_subscribed_once(self, backend):
        router = Router(backend, clock=FakeClock())
        a = router.connect(FakeLink(), "alice", native=False)
        b = router.connect(FakeLink(), "bob", native=False)
        assert backend.subscribe_calls.count("group:lobby") == 1
        router.disconnect(a)
        assert "group:lobby" not in backend.unsubscribe_calls
        router.disconnect(b)
        assert backend.unsubscribe_calls.count("group:lobby") == 1
