"""
improto/web/flush.py: a broadcast frame reaches an idle member's socket at
once, and goes behind the bytes a member already has buffered otherwise.

The first part pins what :func:`improto.web.flush.idle_socket` reads of
Twisted (the reviewed sources, and the attributes' behaviour on a real
socket), so that a Twisted upgrade that changes them fails here.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import socket
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_twisted
import twisted
from twisted.internet import _newtls, abstract, main, tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from improto.backends.memory import MemoryBackend
from improto.router import Router
from improto.settings import Settings
from improto.web import flush
from improto.web.chat import ChatServerFactory, ChatServerProtocol
from tests import wsframes

REVIEW = (
    f"Twisted {twisted.__version__} changed what improto/web/flush.py's idle_socket reads "
    "(the write buffers of abstract.FileDescriptor, the TLS flag): re-review it"
)
#: sha256 of the sources idle_socket's reading of the buffers relies on, as reviewed.
REVIEWED = {
    "FileDescriptor.write": "3e46c97fc173bc7e227065420969c27688f24903c27dcc165b63166a605d688c",
    "FileDescriptor.doWrite": "a986d7b1b1054e431495d50528824683fa7ebb1ffcf3e57333bdd6f37f603141",
    "ConnectionMixin.write": "ea311df0946d3f997a11838e59692e33a6734dcd42a0f29b3331e7ad3ca8117a",
}
SOURCES = {
    "FileDescriptor.write": abstract.FileDescriptor.write,
    "FileDescriptor.doWrite": abstract.FileDescriptor.doWrite,
    "ConnectionMixin.write": _newtls.ConnectionMixin.write,
}


def source_hash(name: str) -> str:
    return hashlib.sha256(inspect.getsource(SOURCES[name]).encode()).hexdigest()


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_twisted_write_path_is_the_reviewed_one(name: str) -> None:
    assert source_hash(name) == REVIEWED[name], f"{REVIEW}: {name}"


@pytest.fixture
def pair() -> Iterator[tuple[tcp.Connection, socket.socket, MemoryReactor]]:
    """A Twisted TCP transport (on a fake reactor) on one end of a real
    socket pair, and the other end, non-blocking, to read what it sent."""
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    reactor = MemoryReactor()
    transport = tcp.Connection(ours, Protocol(), reactor)
    transport.connected = 1
    yield transport, theirs, reactor
    ours.close()
    theirs.close()


def received(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


def test_an_idle_connection_is_one_with_empty_buffers(pair) -> None:
    transport, theirs, reactor = pair
    assert flush.idle_socket(transport) is transport.getHandle()
    transport.write(b"queued")
    assert flush.idle_socket(transport) is None and transport in reactor.getWriters()
    assert transport.doWrite() is None
    assert flush.idle_socket(transport) is transport.getHandle()
    assert transport not in reactor.getWriters() and received(theirs) == b"queued"


def test_partly_sent_bytes_still_count_as_buffered(pair) -> None:
    transport, theirs, _ = pair
    transport.write(b"x" * (1 << 22))  # more than the socket pair takes at once
    transport.doWrite()
    assert 0 < transport.offset < len(transport.dataBuffer)
    assert flush.idle_socket(transport) is None


@pytest.mark.parametrize("state", ["TLS", "disconnecting", "_writeDisconnecting", "lost"])
def test_a_connection_in_any_other_state_is_not_idle(pair, state: str) -> None:
    transport, _, _ = pair
    if state == "lost":
        transport.connected = 0
    else:
        setattr(transport, state, True)
    assert flush.idle_socket(transport) is None


def test_anything_but_a_tcp_connection_is_not_idle() -> None:
    assert flush.idle_socket(StringTransport()) is None
    assert flush.idle_socket(object()) is None


def test_a_twisted_without_those_attributes_gets_plain_writes(pair, monkeypatch) -> None:
    transport, theirs, _ = pair
    del transport._tempDataLen
    assert flush.idle_socket(transport) is None


# -- frames held until the turn ends -------------------------------------------------------


@pytest.fixture
def clock() -> Iterator[Clock]:
    yield Clock()
    flush.held.clear()  # whatever a failed test left
    flush._flush_scheduled = False


def test_held_frames_leave_together_when_the_turn_ends(pair, clock) -> None:
    transport, theirs, reactor = pair
    assert flush.hold(transport, b"one ", clock) and flush.hold(transport, b"two", clock)
    # Neither on the socket nor in Twisted's buffer, and no epoll_ctl to watch it.
    assert received(theirs) == b"" and flush.idle_socket(transport) is not None
    assert transport not in reactor.getWriters()
    clock.advance(0)
    assert received(theirs) == b"one two" and not flush.held
    assert transport not in reactor.getWriters()


def test_a_busy_socket_is_not_held_for(pair, clock) -> None:
    transport, theirs, _ = pair
    transport.write(b"older")
    assert flush.hold(transport, b"frame", clock) is False and not flush.held


def test_with_the_policy_off_nothing_is_held(pair, clock, monkeypatch) -> None:
    transport, _, _ = pair
    monkeypatch.setattr(flush, "enabled", False)
    assert flush.hold(transport, b"frame", clock) is False


def test_a_write_that_must_follow_releases_what_is_held(pair, clock) -> None:
    transport, theirs, reactor = pair
    flush.hold(transport, b"held ", clock)
    flush.write_now(transport, b"now ")  # a broadcast sent at once: still behind it
    assert received(theirs) == b""
    flush.release(transport)
    transport.write(b"ack")
    transport.doWrite()
    assert received(theirs) == b"held now ack"
    clock.advance(0)  # nothing left to send at the turn's end
    assert received(theirs) == b"" and not flush.held


def test_held_frames_the_kernel_does_not_take_are_buffered_in_order(pair, clock) -> None:
    transport, theirs, reactor = pair
    big = bytes(range(256)) * 8192  # 2 MiB: more than the socket pair holds
    flush.hold(transport, big, clock)
    flush.hold(transport, b"next", clock)
    clock.advance(0)
    got = received(theirs)
    assert 0 < len(got) < len(big) + 4 and transport in reactor.getWriters()
    while transport in reactor.getWriters():
        transport.doWrite()
        got += received(theirs)
    assert got == big + b"next"


def test_held_frames_of_a_lost_connection_are_dropped_quietly(pair, clock) -> None:
    transport, theirs, _ = pair
    flush.hold(transport, b"frame", clock)
    transport.connectionLost(Failure(ConnectionDone()))
    clock.advance(0)
    assert not flush.held


# -- the policy ----------------------------------------------------------------------------


def test_an_idle_member_gets_its_frame_at_once(pair) -> None:
    transport, theirs, reactor = pair
    flush.write(transport, b"frame")
    assert received(theirs) == b"frame"
    assert flush.idle_socket(transport) is not None and not reactor.getWriters()


def test_a_member_with_buffered_bytes_gets_the_frame_behind_them(pair) -> None:
    transport, theirs, reactor = pair
    transport.write(b"older ")
    flush.write(transport, b"frame")
    assert received(theirs) == b""
    assert transport in reactor.getWriters()
    transport.doWrite()
    assert received(theirs) == b"older frame"


def test_what_the_kernel_does_not_take_is_buffered_in_order(pair) -> None:
    transport, theirs, reactor = pair
    big = bytes(range(256)) * 8192  # 2 MiB: more than the socket pair holds
    flush.write(transport, big)
    flush.write(transport, b"next")
    assert transport in reactor.getWriters() and flush.idle_socket(transport) is None
    got = received(theirs)
    assert 0 < len(got) < len(big)
    while transport in reactor.getWriters():
        transport.doWrite()
        got += received(theirs)
    assert got == big + b"next"


def test_a_broken_socket_is_left_to_twisted_to_report(pair) -> None:
    transport, theirs, reactor = pair
    theirs.close()
    flush.write(transport, b"frame")  # EPIPE: buffered, no exception here
    assert transport in reactor.getWriters()
    assert transport.doWrite() is main.CONNECTION_LOST


def test_producer_is_paused_when_the_rest_goes_past_the_buffer_size(pair) -> None:
    transport, _, _ = pair
    paused = []

    class Producer:
        def pauseProducing(self) -> None:
            paused.append(True)

        def resumeProducing(self) -> None: ...

        def stopProducing(self) -> None: ...

    transport.registerProducer(Producer(), True)
    for _ in range(64):
        flush.write(transport, b"y" * 65536)
    assert paused


def test_the_first_broadcast_of_a_turn_sends_at_once_unless_a_burst_was_recent() -> None:
    clock = MemoryReactorClock()
    turns = flush.Turns(clock)
    assert turns.direct() is True
    assert turns.direct() is False  # the same turn: buffered, for one send per member
    clock.advance(0)  # a turn of two: a burst
    for _ in range(flush.QUIET_TURNS):
        assert turns.direct() is False
        clock.advance(0)
    assert turns.direct() is True
    clock.advance(0)
    clock.advance(0)  # a turn without broadcasts changes nothing
    assert turns.direct() is True


def test_private_messages_send_at_once_while_turns_are_light() -> None:
    clock = MemoryReactorClock()
    turns = flush.Turns(clock)
    light = flush.SINGLES_AT_ONCE
    assert [turns.direct(1) for _ in range(light + 2)] == [True] * light + [False, False]
    clock.advance(0)  # a heavy turn: the next one sends only its first at once
    assert [turns.direct(1) for _ in range(3)] == [True, False, False]
    clock.advance(0)  # that one was light again
    assert [turns.direct(1) for _ in range(light)] == [True] * light
    clock.advance(0)
    clock.advance(0)  # a turn without any changes nothing
    assert turns.direct(1) is True


def test_private_messages_do_not_make_a_burst_of_fan_outs() -> None:
    clock = MemoryReactorClock()
    turns = flush.Turns(clock)
    assert turns.direct(1) is True and turns.direct(1000) is True and turns.direct(1) is True
    clock.advance(0)
    assert turns.direct(1000) is True
    assert turns.direct(1000) is False  # a second fan-out in a turn is still buffered
    assert turns.direct(1) is True  # and it does not hold back the turn's first private one


def test_with_the_policy_off_every_broadcast_is_buffered(monkeypatch) -> None:
    monkeypatch.setattr(flush, "enabled", False)
    assert flush.Turns(MemoryReactorClock()).direct() is False
    assert flush.Turns(MemoryReactorClock()).direct(1) is False


# -- through the deployed stack --------------------------------------------------------------


@contextlib.asynccontextmanager
async def two_members(
    names: tuple[str, str]
) -> AsyncIterator[tuple[ChatServerFactory, list[ChatServerProtocol], list[socket.socket]]]:
    """
    Two chat connections behind twisted.web (as deployed: each on a
    ``tcp.Connection``), open and with their welcome read: the factory,
    the connections and the clients' sockets, in the order of ``names``.
    """
    from autobahn.twisted.resource import WebSocketResource
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    opened: list[ChatServerProtocol] = []

    class Recording(ChatServerProtocol):
        def onOpen(self) -> None:
            super().onOpen()
            opened.append(self)

    backend = MemoryBackend()
    backend.start()
    factory = ChatServerFactory(Router(backend), Settings(), reactor)
    factory.protocol = Recording
    root = Resource()
    root.putChild(b"ws", WebSocketResource(factory))
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    clients: list[socket.socket] = []
    try:
        for name in names:
            sock = socket.create_connection(("127.0.0.1", port.getHost().port))
            sock.setblocking(False)
            sock.sendall(wsframes.handshake(f"/ws/{name}"))
            clients.append(sock)
        deadline = reactor.seconds() + 10
        while len(opened) < 2 and reactor.seconds() < deadline:
            await deferLater(reactor, 0.01, lambda: None)
        await deferLater(reactor, 0.05, lambda: None)  # let the welcome frames go
        for sock in clients:
            received(sock)
        by_port = {p.transport.getPeer().port: p for p in opened}
        factory.turns = flush.Turns(reactor)
        yield factory, [by_port[sock.getsockname()[1]] for sock in clients], clients
    finally:
        for sock in clients:
            sock.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_behind_twisted_web_a_broadcast_reaches_idle_members_during_the_call() -> None:
    """
    A WebSocket behind twisted.web (as deployed) is on a ``tcp.Connection``:
    a broadcast's frame is on an idle member's socket when ``broadcast``
    returns, and a member with bytes buffered gets it after them.
    """
    from twisted.internet import reactor

    async with two_members(("idle", "busy")) as (factory, (idle, busy), clients):
        assert flush.idle_socket(idle.transport) is not None
        busy.sendPing(b"older")  # a ping, written as Twisted does: buffered
        assert flush.idle_socket(busy.transport) is None
        ChatServerProtocol.broadcast([idle, busy], b"hello", False)
        assert wsframes.parse_frames(received(clients[0])) == [(1, b"hello", False)]
        assert received(clients[1]) == b""
        await deferLater(reactor, 0.05, lambda: None)
        assert [f[:2] for f in wsframes.parse_frames(received(clients[1]))] == [
            (9, b"older"), (1, b"hello")
        ]


@pytest_twisted.ensureDeferred
async def test_behind_twisted_web_later_broadcasts_of_a_turn_are_held_and_keep_their_order() -> None:
    """
    The second broadcast of a turn is held for an idle member (not on the
    socket, not in Twisted's buffer); a frame the member is sent next (an
    ack, say) releases it first; the turn's end sends what is left.
    """
    from twisted.internet import reactor

    async with two_members(("alice", "bob")) as (factory, (alice, bob), clients):
        ChatServerProtocol.broadcast([alice, bob], b"first", False)  # sent at once
        ChatServerProtocol.broadcast([alice, bob], b"second", False)  # held
        assert [f[1] for f in wsframes.parse_frames(received(clients[0]))] == [b"first"]
        assert flush.idle_socket(alice.transport) is not None and alice.transport in flush.held
        alice.send_frame(b"ack", False)  # releases "second" first
        await deferLater(reactor, 0, lambda: None)
        await deferLater(reactor, 0.05, lambda: None)
        assert [f[1] for f in wsframes.parse_frames(received(clients[0]))] == [b"second", b"ack"]
        assert [f[1] for f in wsframes.parse_frames(received(clients[1]))] == [b"first", b"second"]
        assert not flush.held
