"""The Autobahn layer on StringTransport: handshakes, close codes, shared frames."""

from __future__ import annotations

import json
import socket

import pytest
import pytest_twisted
from twisted.internet.error import ConnectionDone
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from improto.backends.memory import MemoryBackend
from improto.protocol import codec
from improto.router import Router, RouterLimits
from improto.settings import Settings
from improto.web.chat import ChatServerFactory
from tests import wsframes

DEFLATE = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
NATIVE = "Sec-WebSocket-Protocol: improto.v1\r\n"


class LenientTransport(StringTransport):
    """Autobahn unregisters a producer it never registered on close."""

    def unregisterProducer(self) -> None:
        self.producer = None


class Client:
    def __init__(self, factory: ChatServerFactory, path: str, headers: str = "") -> None:
        self.protocol = factory.buildProtocol(None)
        self.transport = LenientTransport()
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(wsframes.handshake(path, headers))
        self.response, rest = wsframes.split_response(self.transport.value())
        self.transport.clear()
        self.pending = rest

    def send(self, payload: bytes | str, opcode: int = 1) -> None:
        data = payload.encode("utf-8") if isinstance(payload, str) else payload
        self.protocol.dataReceived(wsframes.client_frame(data, opcode))

    def raw(self) -> bytes:
        data = self.pending + self.transport.value()
        self.pending = b""
        self.transport.clear()
        return data

    def frames(self) -> list[tuple[int, bytes, bool]]:
        return wsframes.parse_frames(self.raw(), inflate=True)

    def messages(self) -> list[dict]:
        return [json.loads(p) for op, p, _ in self.frames() if op == 1]


@pytest.fixture
def factory():
    backend = MemoryBackend()
    backend.start()
    router = Router(backend, limits=RouterLimits(max_message_size=1000))
    return ChatServerFactory(router, Settings(), MemoryReactorClock())


def test_handshake_accepts_deflate_without_server_context_takeover(factory):
    client = Client(factory, "/ws/alice", DEFLATE)
    assert client.response.startswith(b"HTTP/1.1 101")
    assert b"permessage-deflate" in client.response
    assert b"server_no_context_takeover" in client.response


def test_one_compressed_frame_is_shared_by_members(factory):
    alice = Client(factory, "/ws/alice")
    members = [Client(factory, f"/ws/m{i}", DEFLATE) for i in range(3)]
    plain = Client(factory, "/ws/plain")
    for c in members + [plain, alice]:
        c.raw()
    alice.send(json.dumps({"msg": "你好 " * 20}))
    wires = [m.raw() for m in members]
    assert wires[0] == wires[1] == wires[2]
    [(opcode, payload, compressed)] = wsframes.parse_frames(wires[0], inflate=True)
    assert compressed and opcode == 1
    assert json.loads(payload)["msg"] == "你好 " * 20
    [(_, plain_payload, plain_compressed)] = plain.frames()
    assert not plain_compressed and plain_payload == payload


def test_native_subprotocol_is_negotiated(factory):
    client = Client(factory, "/ws/nat", NATIVE)
    assert b"Sec-WebSocket-Protocol: improto.v1" in client.response
    assert client.messages()[0]["type"] == "welcome"


@pytest.mark.parametrize(
    "path, fragment",
    [("/ws/", "empty"), ("/ws/%00bad", "U+0000"), ("/ws/%FF", "UTF-8"), ("/" + "x" * 40, "longer")],
)
def test_bad_nickname_gets_an_error_frame_then_1008(factory, path, fragment):
    client = Client(factory, path)
    frames = client.frames()
    error = json.loads(frames[0][1])
    assert error["code"] == "bad_name" and fragment in error["msg"]
    assert frames[1][0] == 8 and wsframes.close_code(frames[1][1]) == 1008
    assert not factory.router.sessions


def test_invalid_utf8_closes_with_1007_and_others_keep_working(factory):
    bad = Client(factory, "/ws/bad")
    good = Client(factory, "/ws/good")
    other = Client(factory, "/ws/other")
    for c in (bad, good, other):
        c.raw()
    bad.send(b"\xff\xfe", opcode=1)
    [(opcode, payload, _)] = bad.frames()
    assert opcode == 8 and wsframes.close_code(payload) == 1007
    good.send("still fine")
    assert [m["msg"] for m in other.messages()] == ["still fine"]


def test_hugely_oversized_message_closes_with_1009(factory):
    client = Client(factory, "/ws/big")
    client.raw()
    client.send("x" * 4001)
    frames = client.frames()
    assert frames[-1][0] == 8 and wsframes.close_code(frames[-1][1]) == 1009


def test_slightly_oversized_message_gets_an_error_and_the_connection_stays(factory):
    client = Client(factory, "/ws/big")
    client.raw()
    client.send("x" * 1500)
    [error] = client.messages()
    assert error["code"] == "too_large"
    client.send(json.dumps({"to_user": "nobody", "msg": "x"}))
    assert client.messages()[0]["code"] == "unknown_user"


def test_echo_route_returns_text_and_binary_through_the_router(factory):
    client = Client(factory, "/echo", DEFLATE)
    client.raw()
    client.send("hé")
    client.send(b"\x00\x01\x02", opcode=2)
    assert [(op, p) for op, p, _ in client.frames()] == [(1, "hé".encode()), (2, b"\x00\x01\x02")]


def test_close_removes_the_session(factory):
    client = Client(factory, "/ws/alice")
    assert len(factory.router.sessions) == 1
    client.protocol.connectionLost(Failure(ConnectionDone()))
    assert not factory.router.sessions


@pytest.mark.parametrize("how", ["client close", "refused name", "origin 403", "dropped"])
def test_a_lost_connection_is_freed_without_the_garbage_collector(factory, how):
    """
    Autobahn fires ``is_closed`` with the connection itself: were the
    connection to keep its Deferred, the two would form a cycle that only a
    garbage collection frees, with everything the connection holds.
    """
    import gc
    import weakref

    path, headers = {"refused name": ("/ws/%00", ""), "origin 403": ("/ws/a", "Origin: http://x.example\r\n")
                     }.get(how, ("/ws/alice", ""))
    gc.collect()
    gc.disable()
    try:
        client = Client(factory, path, headers)
        if how == "client close":
            client.send((1000).to_bytes(2, "big"), opcode=8)
        waiting = client.protocol.is_closed
        heard: list[object] = []
        waiting.addCallback(heard.append)
        _lose(client)
        client.transport.producer = None  # as Twisted's FileDescriptor.connectionLost does
        assert heard == [client.protocol]
        assert client.protocol.is_closed.called and client.protocol.is_closed.result is client.protocol
        link = weakref.ref(client.protocol)
        del client, waiting
        heard.clear()
        assert link() is None, [type(r).__name__ for r in gc.get_referrers(link())]
    finally:
        gc.enable()


def test_a_compression_bomb_closes_with_1009(factory):
    import zlib

    client = Client(factory, "/ws/bomber", DEFLATE)
    victim = Client(factory, "/ws/victim")
    client.raw(), victim.raw()
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = (compressor.compress(b"\x00" * 10_000_000) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    assert len(bomb) < 20_000
    client.protocol.dataReceived(wsframes.client_frame(bomb, opcode=1, rsv1=True))
    frames = client.frames()
    assert frames[-1][0] == 8 and wsframes.close_code(frames[-1][1]) == 1009
    assert victim.frames() == []


def test_a_refused_native_client_still_gets_its_subprotocol_and_the_reason(factory):
    client = Client(factory, "/ws/improto", NATIVE)
    assert b"Sec-WebSocket-Protocol: improto.v1" in client.response
    frames = client.frames()
    assert json.loads(frames[0][1]) == {
        "type": "error", "code": "bad_name", "reason": "The nickname 'improto' is reserved."
    }
    assert wsframes.close_code(frames[1][1]) == 1008


# -- admission: origins, connections per address and per user -------------------------


def _limited_factory(**settings) -> ChatServerFactory:
    backend = MemoryBackend()
    backend.start()
    router = Router(backend, limits=RouterLimits(max_message_size=1000))
    return ChatServerFactory(router, Settings(**settings), MemoryReactorClock())


def _lose(client: Client) -> None:
    client.protocol.connectionLost(Failure(ConnectionDone()))


def test_a_cross_site_origin_gets_403_and_no_session(factory):
    client = Client(factory, "/ws/alice", "Origin: http://evil.example\r\n")
    assert client.response.startswith(b"HTTP/1.1 403 Forbidden")
    assert b"http://evil.example" in client.pending
    assert not factory.router.sessions
    _lose(client)
    assert len(factory.per_address) == 0


def test_every_close_path_gives_the_address_slot_back():
    factory = _limited_factory(max_connections_per_ip=2)
    good = Client(factory, "/ws/alice")
    bad_name = Client(factory, "/ws/%00")
    refused = Client(factory, "/ws/carol")
    assert refused.response.startswith(b"HTTP/1.1 429 Too Many Requests")
    for client in (good, bad_name, refused):
        _lose(client)
    assert len(factory.per_address) == 0
    assert Client(factory, "/ws/dave").response.startswith(b"HTTP/1.1 101")


def test_a_user_over_its_limit_is_closed_with_4029_and_others_are_not():
    factory = _limited_factory(max_connections_per_user=1)
    first = Client(factory, "/ws/alice")
    second = Client(factory, "/ws/alice", NATIVE)
    other = Client(factory, "/ws/bob")
    assert second.response.startswith(b"HTTP/1.1 101")
    [(opcode, payload, _)] = second.frames()
    assert opcode == 8 and wsframes.close_code(payload) == 4029
    assert b"at most 1" in payload
    assert [s.user for s in factory.router.sessions.values()] == ["alice", "bob"]
    first.raw(), other.raw()
    first.send("hi bob")
    assert [m["msg"] for m in other.messages()] == ["hi bob"]
    _lose(first)
    _lose(second)
    assert factory.per_user.count("alice") == 0
    assert Client(factory, "/ws/alice", NATIVE).messages()[0]["type"] == "welcome"


def test_uncompressed_members_share_one_prepared_frame(factory, monkeypatch):
    prepared = []
    prepare = factory.prepareMessage

    def spy(payload, isBinary=False, doNotCompress=False):
        prepared.append(prepare(payload, isBinary, doNotCompress))
        return prepared[-1]

    monkeypatch.setattr(factory, "prepareMessage", spy)
    alice = Client(factory, "/ws/alice")
    members = [Client(factory, f"/ws/m{i}") for i in range(3)]
    for c in members + [alice]:
        c.raw()
    alice.send("hello, all")
    wires = [m.raw() for m in members]
    [message] = prepared
    assert wires[0] == wires[1] == wires[2] == message.payloadHybi
    [(opcode, payload, compressed)] = wsframes.parse_frames(wires[0])
    assert opcode == 1 and not compressed and json.loads(payload)["msg"] == "hello, all"


def test_a_member_that_stops_reading_is_dropped_after_max_backlog(caplog_events):
    backend = MemoryBackend()
    backend.start()
    router = Router(backend, limits=RouterLimits(max_message_size=1000))
    factory = ChatServerFactory(router, Settings(max_backlog=2000), MemoryReactorClock())
    alice, slow, reader = (Client(factory, f"/ws/{n}") for n in ("alice", "slow", "reader"))
    for c in (alice, slow, reader):
        c.raw()
    assert slow.transport.producer is slow.protocol
    slow.protocol.pauseProducing()  # what Twisted does when the kernel buffer is full
    for i in range(20):
        alice.send("x" * 180 + f"{i:03}")
    assert slow.transport.disconnected
    queued = slow.raw()
    assert len(queued) <= 2000 and 0 < len(wsframes.parse_frames(queued)) < 20
    assert len(reader.messages()) == 20
    drops = [e for e in caplog_events if "stopped reading" in e.get("log_format", "")]
    assert len(drops) == 1


@pytest.mark.parametrize("served_by", ["twisted.web", "factory"])
@pytest_twisted.ensureDeferred
async def test_an_accepted_socket_has_tcp_nodelay_before_the_handshake_response(served_by):
    """
    Nothing the server writes waits for Nagle's algorithm (and the client's
    delayed ACK). Behind twisted.web, its HTTP channel sets TCP_NODELAY on
    accepting; a factory listened on directly gets it from Autobahn's own
    connectionMade, through LinkProtocol.tcpNoDelay.
    """
    from autobahn.twisted.resource import WebSocketResource
    from twisted.internet import reactor
    from twisted.internet.protocol import ClientFactory, Protocol
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    from improto.web.chat import ChatServerProtocol

    seen: list[int] = []

    class Recording(ChatServerProtocol):
        def sendData(self, data, sync=False, chopsize=None):
            if not seen:
                assert data.startswith(b"HTTP/1.1 101")
                sock = self.transport.getHandle()
                seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            super().sendData(data, sync, chopsize)

    backend = MemoryBackend()
    backend.start()
    factory = ChatServerFactory(Router(backend), Settings(), reactor)
    factory.protocol = Recording
    if served_by == "twisted.web":
        root = Resource()
        root.putChild(b"ws", WebSocketResource(factory))
        port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    else:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    received = bytearray()

    class Raw(Protocol):
        def connectionMade(self):
            self.transport.write(wsframes.handshake("/ws/alice"))

        def dataReceived(self, data):
            received.extend(data)

    client_factory = ClientFactory()
    client_factory.protocol = Raw
    connector = reactor.connectTCP("127.0.0.1", port.getHost().port, client_factory)
    try:
        deadline = reactor.seconds() + 10
        while b"\r\n\r\n" not in received and reactor.seconds() < deadline:
            await deferLater(reactor, 0.01, lambda: None)
        assert received.startswith(b"HTTP/1.1 101")
        assert seen and seen[0] != 0, "TCP_NODELAY is off when the 101 response is written"
    finally:
        connector.disconnect()
        await port.stopListening()


def test_protocol_options_live_on_the_class_not_in_each_connection(factory):
    from autobahn.twisted.websocket import WebSocketServerProtocol

    from improto.web.chat import PER_FRAME_OPTIONS

    alice, bob = Client(factory, "/ws/alice"), Client(factory, "/ws/bob")
    assert type(alice.protocol) is type(bob.protocol)
    copied = set(WebSocketServerProtocol.CONFIG_ATTRS) & set(vars(alice.protocol))
    # Only what every frame reads is copied into the connection.
    assert copied == PER_FRAME_OPTIONS
    assert len(PER_FRAME_OPTIONS) < len(WebSocketServerProtocol.CONFIG_ATTRS) // 2
    assert alice.protocol.closeHandshakeTimeout == 3
    assert alice.protocol.autoPingInterval == factory.autoPingInterval
    # 85 keys is the most a 128-slot instance dict holds (the idle memory per connection).
    assert len(vars(alice.protocol)) <= 85


def test_changed_options_reach_new_connections_and_spare_open_ones(factory):
    before = Client(factory, "/ws/alice")
    factory.setProtocolOptions(closeHandshakeTimeout=7)
    after = Client(factory, "/ws/bob")
    assert (before.protocol.closeHandshakeTimeout, after.protocol.closeHandshakeTimeout) == (3, 7)
    assert after.response.startswith(b"HTTP/1.1 101")


def test_an_option_the_protocol_class_sets_itself_is_kept(factory):
    from improto.web.chat import ChatServerProtocol

    class Patient(ChatServerProtocol):
        closeHandshakeTimeout = 42

    factory.protocol = Patient
    client = Client(factory, "/ws/alice", DEFLATE)
    assert isinstance(client.protocol, Patient)
    assert client.protocol.closeHandshakeTimeout == 42
    # A function option (perMessageCompressionAccept) is not turned into a method.
    fresh = factory.buildProtocol(None)
    assert fresh.perMessageCompressionAccept is factory.perMessageCompressionAccept


def test_an_open_connection_keeps_no_send_queue_or_handshake_texts(factory):
    client = Client(factory, "/ws/alice")
    assert client.protocol.send_queue == ()
    assert "_send_queue" not in vars(client.protocol)
    assert client.protocol.http_request_data is None
    assert client.protocol.http_response_data is None
    assert client.protocol.http_headers["host"]  # the parsed headers stay for embedders


@pytest_twisted.ensureDeferred
async def test_sync_and_chopped_writes_still_go_out_in_order(factory):
    from twisted.internet import reactor

    client = Client(factory, "/ws/alice")
    client.raw()
    link = client.protocol
    link.sendMessage(b"first", sync=True)
    link.sendData(b"\x81\x06second", chopsize=3)  # an unmasked text frame, in 3-byte writes
    link.sendMessage(b"third")
    await deferLater(reactor, 0.2, lambda: None)
    assert [p for _, p, _ in client.frames()] == [b"first", b"second", b"third"]
    assert len(link.send_queue) == 0


def test_a_plain_handshake_takes_the_short_way_and_debug_logging_autobahns(factory, monkeypatch):
    import txaio

    from improto.web import handshake

    answers: list[bool] = []
    real = handshake.open_plain

    def spy(link, request=None):
        answers.append(real(link, request))
        return answers[-1]

    monkeypatch.setattr(handshake, "open_plain", spy)
    native = Client(factory, "/ws/alice", DEFLATE + NATIVE)
    assert native.response.startswith(b"HTTP/1.1 101") and b"improto.v1" in native.response
    assert native.messages()[0]["type"] == "welcome"
    assert answers == [True]
    level = txaio.get_global_log_level()
    txaio.set_global_log_level("debug")
    try:
        assert Client(factory, "/ws/bob").response.startswith(b"HTTP/1.1 101")
    finally:
        txaio.set_global_log_level(level)
    assert answers == [True]  # Autobahn's processHandshake read that one


def test_a_history_page_too_big_for_one_frame_arrives_cut_to_fit(factory):
    # factory: max_message_size 1000, so frames of up to 4,000 bytes either way;
    # Autobahn refuses to send a longer one (PayloadExceededError).
    alice = Client(factory, "/ws/alice", NATIVE)
    for i in range(10):
        alice.send(json.dumps({"type": "send", "group": "lobby", "msg": f"{i}" * 900, "id": f"m{i}"}))
    alice.raw()
    alice.send(json.dumps({"type": "history", "group": "lobby", "after": 0, "limit": 10, "id": "h"}))
    [(opcode, payload, _)] = alice.frames()
    page = json.loads(payload)
    assert len(payload) <= 4000 and page["type"] == "history" and page["id"] == "h"
    assert [m["seq"] for m in page["messages"]] == list(range(1, len(page["messages"]) + 1))


def test_with_a_tiny_message_limit_a_too_large_message_still_gets_its_error_frame():
    backend = MemoryBackend()
    backend.start()
    router = Router(backend, limits=RouterLimits(max_message_size=40))
    factory = ChatServerFactory(router, Settings(), MemoryReactorClock())
    seed = Client(factory, "/ws/alice")
    seed.raw()
    seed.send("0" * 130)  # over 40, under the 1,064-byte frame limit
    [error] = seed.messages()
    assert error["code"] == "too_large" and error["sender"] == codec.SYSTEM_NAME
