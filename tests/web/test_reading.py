"""
improto/web/reading.py reads whole simple data frames without Autobahn's
per-frame methods. These tests hold it to Autobahn's own reading: the same
bytes, cut into reads anywhere, give the same replies, close frames,
state and counters through ``dataReceived`` (with it) as through
Autobahn's ``_dataReceived`` (without it); they pin the Autobahn methods it
re-states, and check that it is taken where it should be and nowhere else.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import struct
from collections.abc import Iterator
from typing import Any

import autobahn
import pytest
from autobahn.websocket.protocol import WebSocketProtocol
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock, StringTransport

from improto.backends.memory import MemoryBackend
from improto.router import Router, RouterLimits
from improto.settings import Settings
from improto.web import reading
from improto.web.chat import ChatServerFactory, ChatServerProtocol
from tests import wsframes
from tests.protocol import fuzzing  # noqa: F401 - the example budgets (HYPOTHESIS_PROFILE)

#: sha256 of the Autobahn methods reading.read_whole_frames re-states for one
#: kind of frame (processData's header checks, onFrameData's counters and
#: UTF-8 check, onFrameEnd's ping-timeout cancel and counters, the message
#: hooks down to onMessage), as reviewed.
REVIEWED = "563a340e6c0c3e79bd7962a1ead846e74a6f5c0bdc9b0e50492136335fc6e450"
REVIEW = (
    f"Autobahn {autobahn.__version__} changed a method improto/web/reading.py re-states: "
    "re-review read_whole_frames against it, then update REVIEWED"
)


def bypassed_source() -> str:
    from autobahn.twisted.websocket import WebSocketServerProtocol

    return "".join(inspect.getsource(getattr(WebSocketServerProtocol, name)) for name in reading.BYPASSED)


def test_the_methods_it_re_states_are_the_reviewed_ones() -> None:
    assert hashlib.sha256(bypassed_source().encode()).hexdigest() == REVIEWED, REVIEW


class LenientTransport(StringTransport):
    def unregisterProducer(self) -> None:
        self.producer = None


class ClosingOnBye(ChatServerProtocol):
    """Closes the connection on a "bye" message: frames after it are read in CLOSING."""

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if payload == b"bye":
            self.sendClose(1000)
        else:
            super().onMessage(payload, isBinary)


def a_factory(max_message_size: int = 1000) -> ChatServerFactory:
    backend = MemoryBackend()
    backend.start()
    router = Router(backend, limits=RouterLimits(max_message_size=max_message_size))
    factory = ChatServerFactory(router, Settings(), MemoryReactorClock())
    factory.protocol = ClosingOnBye
    return factory


def opened(factory: ChatServerFactory, path: str) -> tuple[Any, StringTransport]:
    protocol = factory.buildProtocol(None)
    transport = LenientTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(wsframes.handshake(path))
    assert transport.value().startswith(b"HTTP/1.1 101")
    transport.clear()
    return protocol, transport


COUNTERS = ("incomingOctetsWireLevel", "incomingOctetsWebSocketLevel", "incomingOctetsAppLevel",
            "incomingWebSocketFrames", "incomingWebSocketMessages")


def outcome(protocol: Any, transport: StringTransport) -> tuple[Any, ...]:
    stats = protocol.trafficStats
    return (transport.value(), protocol.state, protocol.failedByMe, protocol.data,
            tuple(getattr(stats, name) for name in COUNTERS))


def both_ways(path: str, reads: list[bytes], max_message_size: int = 1000) -> tuple[tuple[Any, ...], ...]:
    """The outcome of ``reads`` with the fast reading and with Autobahn's alone."""
    results = []
    for fast in (True, False):
        protocol, transport = opened(a_factory(max_message_size), path)
        for data in reads:
            if fast:
                protocol.dataReceived(data)
            else:
                protocol._dataReceived(data)
        results.append(outcome(protocol, transport))
    return tuple(results)


def unmasked(payload: bytes, opcode: int = 1) -> bytes:
    return bytes((0x80 | opcode, len(payload))) + payload


def not_minimal(payload: bytes) -> bytes:
    """A short frame whose length is written in 16 bits (RFC 6455 forbids it)."""
    mask = os.urandom(4)
    return (bytes((0x81, 0x80 | 126)) + struct.pack("!H", len(payload)) + mask
            + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


short_text = st.text(max_size=40).map(lambda s: wsframes.client_frame(s.encode("utf-8")))
medium_text = st.builds(
    lambda n, ch: wsframes.client_frame((ch * n).encode("utf-8")),
    st.integers(min_value=42, max_value=300), st.sampled_from(["a", "é", "二"]))  # 42-900 bytes
bye = st.just(wsframes.client_frame(b"bye"))
any_bytes_as_text = st.binary(max_size=20).map(wsframes.client_frame)  # often not UTF-8
binary = st.binary(max_size=200).map(lambda b: wsframes.client_frame(b, opcode=2))
fragmented = st.tuples(st.text(max_size=10), st.text(max_size=10)).map(
    lambda p: wsframes.client_frame(p[0].encode(), fin=False) + wsframes.client_frame(p[1].encode(), opcode=0))
ping = st.binary(max_size=20).map(lambda b: wsframes.client_frame(b, opcode=9))
close = st.sampled_from([1000, 1001, 3000]).map(lambda c: wsframes.client_frame(struct.pack("!H", c), opcode=8))
violation = st.one_of(
    st.text(max_size=10).map(lambda s: wsframes.client_frame(s.encode(), rsv1=True)),
    st.text(max_size=10).map(lambda s: unmasked(s.encode())),
    st.text(max_size=10).map(lambda s: wsframes.client_frame(s.encode(), opcode=3)),
    st.text(max_size=10).map(lambda s: not_minimal(s.encode())),
    st.text(max_size=10).map(lambda s: wsframes.client_frame(s.encode(), opcode=0)),
    st.binary(min_size=1, max_size=2).map(lambda b: wsframes.client_frame(b"\xe4" + b, opcode=1)),
)
frames = st.lists(
    st.one_of(short_text, short_text, medium_text, any_bytes_as_text, binary, fragmented, ping, close, bye,
              violation),
    min_size=1, max_size=8,
)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False) if b > a]


@given(frames, st.lists(st.integers(min_value=0, max_value=4000), max_size=6))
def test_echo_reads_as_autobahn_reads_whatever_the_frames_and_the_cuts(stream: list[bytes], points: list[int]):
    fast, autobahn_only = both_ways("/echo", cut(b"".join(stream), points))
    assert fast == autobahn_only


@given(frames, st.lists(st.integers(min_value=0, max_value=4000), max_size=6))
def test_chat_reads_as_autobahn_reads_with_a_small_message_limit(stream: list[bytes], points: list[int]):
    # max_message_size 100: the chat route reads frames of up to 400 bytes,
    # so a medium frame gets a too_large error or, past 400, a 1009 close.
    fast, autobahn_only = both_ways("/ws/alice", cut(b"".join(stream), points), max_message_size=100)
    assert fast == autobahn_only


ONE_OF_EACH = {
    "empty text": wsframes.client_frame(b""),
    "empty binary": wsframes.client_frame(b"", opcode=2),
    "125 bytes": wsframes.client_frame(b"a" * 125),
    "126 bytes": wsframes.client_frame(b"a" * 126),
    "too large for the router": wsframes.client_frame(b"a" * 300),
    "too large for the route (1009)": wsframes.client_frame("二".encode() * 300),
    "invalid UTF-8": wsframes.client_frame(b"ok \xff"),
    "UTF-8 cut in a code point": wsframes.client_frame("二".encode()[:2]),
    "RSV1 without deflate": wsframes.client_frame(b"x", rsv1=True),
    "unmasked": unmasked(b"x"),
    "reserved opcode": wsframes.client_frame(b"x", opcode=3),
    "length not minimal": not_minimal(b"x"),
    "continuation first": wsframes.client_frame(b"x", opcode=0),
    "fragment": wsframes.client_frame(b"x", fin=False),
    "ping": wsframes.client_frame(b"x", opcode=9),
    "close": wsframes.client_frame(struct.pack("!H", 1000), opcode=8),
}


@pytest.mark.parametrize("path", ["/echo", "/ws/alice"])
@pytest.mark.parametrize("kind", list(ONE_OF_EACH))
def test_each_kind_of_frame_reads_as_autobahn_reads(path: str, kind: str) -> None:
    # Between two plain frames, in one read: the fast path meets it first hand.
    data = wsframes.client_frame(b"before") + ONE_OF_EACH[kind] + wsframes.client_frame(b"after")
    fast, autobahn_only = both_ways(path, [data], max_message_size=100)
    assert fast == autobahn_only


def test_frames_after_a_close_of_the_servers_read_as_autobahn_reads() -> None:
    data = b"".join(wsframes.client_frame(p) for p in (b"one", b"bye", b"two", b"three"))
    fast, autobahn_only = both_ways("/echo", [data])
    assert fast == autobahn_only


@pytest.fixture
def autobahn_frame_calls(monkeypatch) -> Iterator[list[str]]:
    """The names of Autobahn's per-frame methods called, in order."""
    calls: list[str] = []
    for name in ("processData", "onFrameBegin", "onMessageEnd"):
        original = getattr(WebSocketProtocol, name)

        def spy(self: Any, *args: Any, _original: Any = original, _name: str = name) -> Any:
            calls.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(WebSocketProtocol, name, spy)
    # The per-class answer was computed with the real methods: compute again.
    monkeypatch.setattr(reading, "_plain_classes", {})
    yield calls


def test_whole_small_frames_skip_autobahns_frame_methods(autobahn_frame_calls) -> None:
    protocol, transport = opened(a_factory(), "/echo")
    # The spies are overrides of their own: make this class count as plain.
    reading._plain_classes[type(protocol)] = True
    protocol.dataReceived(wsframes.client_frame(b"one") + wsframes.client_frame(b"\x00\x01", opcode=2)
                          + wsframes.client_frame("二".encode() * 100))
    assert autobahn_frame_calls == []
    assert [(op, p) for op, p, _ in wsframes.parse_frames(transport.value())] == [
        (1, b"one"), (2, b"\x00\x01"), (1, "二".encode() * 100)]


def test_the_rest_of_a_read_goes_to_autobahn_from_the_first_other_frame(autobahn_frame_calls) -> None:
    protocol, transport = opened(a_factory(), "/echo")
    reading._plain_classes[type(protocol)] = True
    ping = wsframes.client_frame(b"are you there", opcode=9)
    three = wsframes.client_frame(b"three")
    protocol.dataReceived(wsframes.client_frame(b"one") + ping + wsframes.client_frame(b"two") + three[:-2])
    assert autobahn_frame_calls.count("onMessageEnd") == 1  # "two"; "one" went the short way
    assert [(op, p) for op, p, _ in wsframes.parse_frames(transport.value())] == [
        (1, b"one"), (10, b"are you there"), (1, b"two")]
    assert protocol.current_frame is not None  # "three" is half read, Autobahn's way
    transport.clear()
    protocol.dataReceived(three[-2:])
    assert [p for _, p, _ in wsframes.parse_frames(transport.value())] == [b"three"]


def test_a_class_that_overrides_a_frame_method_reads_every_frame_autobahns_way() -> None:
    class Counting(ChatServerProtocol):
        frames_begun = 0

        def onMessageFrameBegin(self, length: int) -> None:
            Counting.frames_begun += 1
            super().onMessageFrameBegin(length)

    factory = a_factory()
    factory.protocol = Counting
    protocol, transport = opened(factory, "/echo")
    protocol.dataReceived(wsframes.client_frame(b"one") + wsframes.client_frame(b"two"))
    assert Counting.frames_begun == 2
    assert [p for _, p, _ in wsframes.parse_frames(transport.value())] == [b"one", b"two"]
