"""
The router over any sequence of frames from any number of users: it never
raises, every frame it sends is JSON a browser accepts, every native
request with an id gets exactly one answer with that id, a frame meant as
native never reaches others verbatim, and nothing is left once all leave.
"""

from __future__ import annotations

import json

import attrs
from hypothesis import given
from hypothesis import strategies as st

from improto.backends.memory import MemoryHub
from improto.protocol import codec
from improto.router import RouterLimits
from tests.fakes import FakeClock, FakeLink, make_router
from tests.protocol.fuzzing import browser_json, frames, meant_native

USERS = ["alice", "bob", "café", "小二"]
REPLIES = ("ack", "error", "who")





@attrs.define(eq=False)
class Conn:
    link: FakeLink
    session: object
    node: int
    echo: bool
    #: How many of link.frames have been checked.
    seen: int = 0


actions = st.lists(
    st.one_of(
        st.tuples(st.just("connect"), st.sampled_from(USERS), st.booleans(), st.integers(0, 1)),
        st.tuples(st.just("echo"), st.integers(0, 1)),
        st.tuples(st.just("send"), st.integers(0, 7), frames),
        st.tuples(st.just("binary"), st.integers(0, 7)),
        st.tuples(st.just("tick"), st.floats(0, 2)),
        st.tuples(st.just("close"), st.integers(0, 7)),
    ),
    max_size=40,
)
limits = st.sampled_from(
    [RouterLimits(rate=0, max_message_size=200), RouterLimits(rate=5, burst=4, max_message_size=200)]
)


class Run:
    def __init__(self, limits: RouterLimits) -> None:
        self.hub = MemoryHub()
        self.clock = FakeClock()
        self.nodes = [make_router(self.hub, limits, self.clock) for _ in range(2)]
        self.conns: list[Conn] = []

    def new_frames(self, conn: Conn) -> list[bytes]:
        data = [d for d, binary in conn.link.frames[conn.seen:] if not binary]
        conn.seen = len(conn.link.frames)
        return data

    def check_all(self) -> dict[int, list]:
        """Every new frame to every chat link is browser JSON; by connection."""
        out = {}
        for conn in self.conns:
            data = self.new_frames(conn)
            out[id(conn)] = data if conn.echo else [browser_json(d) for d in data]
        return out

    def connect(self, user: str, native: bool, node: int) -> None:
        link = FakeLink()
        session = self.nodes[node].connect(link, user, native=native)
        self.conns.append(Conn(link, session, node, echo=False))
        self.check_all()

    def echo(self, node: int) -> None:
        link = FakeLink()
        self.conns.append(Conn(link, self.nodes[node].connect_echo(link), node, echo=True))

    def send(self, index: int, text: str) -> None:
        if not self.conns:
            return
        conn = self.conns[index % len(self.conns)]
        was_native = conn.session.native
        router = self.nodes[conn.node]
        router.receive_text(conn.session, text, len(text.encode("utf-8")))
        got = self.check_all()
        mine = got.pop(id(conn))
        if conn.echo:
            assert mine == [text.encode("utf-8")] or json.loads(mine[0])["code"] == "rate_limited"
            return
        replies = [f for f in mine if f["type"] in REPLIES]
        assert len(replies) <= 1, (text, mine)
        request_id = codec.request_id_of(text)
        if request_id is not None and (was_native or conn.session.native or replies):
            assert [f.get("id") for f in replies] == [request_id], (text, mine)
        if was_native or meant_native(text):
            for frames_of_other in got.values():
                for f in frames_of_other:
                    assert not (isinstance(f, dict) and f.get("msg") == text), (text, f)

    def binary(self, index: int) -> None:
        if self.conns:
            conn = self.conns[index % len(self.conns)]
            self.nodes[conn.node].receive_binary(conn.session, b"\x00\xff")
            self.check_all()

    def close(self, index: int) -> None:
        if self.conns:
            conn = self.conns.pop(index % len(self.conns))
            self.nodes[conn.node].disconnect(conn.session)
            self.check_all()

    def everyone_leaves(self) -> None:
        while self.conns:
            self.close(0)
        for router in self.nodes:
            assert dict(router.sessions) == {}
            assert len(router._groups) == 0
            assert router._subscriptions._refs == {}
            assert router._table.by_user == {} and router._table.native_count == 0
        assert self.hub.channels == {}
        assert self.hub.presence == {}


@given(limits, actions)
def test_any_frames_from_any_users(limits, actions):
    run = Run(limits)
    for action in actions:
        match action:
            case ("connect", user, native, node):
                run.connect(user, native, node)
            case ("echo", node):
                run.echo(node)
            case ("send", index, text):
                run.send(index, text)
            case ("binary", index):
                run.binary(index)
            case ("tick", seconds):
                run.clock.now += seconds
            case ("close", index):
                run.close(index)
    run.everyone_leaves()


@given(st.lists(frames, max_size=30))
def test_a_bystander_only_ever_gets_valid_frames_and_keeps_chatting(texts):
    run = Run(RouterLimits(rate=0))
    run.connect("mallory", False, 0)
    run.connect("bob", True, 1)
    run.connect("carol", False, 0)
    mallory, bob, carol = run.conns
    for text in texts:
        run.send(0, text)
    run.send(1, '{"type":"send","group":"lobby","msg":"still fine","id":"b"}')
    assert [f["msg"] for f in carol.link.json() if f.get("msg") == "still fine"] == ["still fine"]
    run.everyone_leaves()
