"""
improto/_autobahn_quiet.py re-states Autobahn hot paths without their
debug-log formatting; these tests pin that the behaviour is Autobahn's own.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest
import txaio
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.xormasker import create_xor_masker
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from improto.web.quiet import QuietLoggingMixin, _create_xor_masker
from tests import wsframes


class Quiet(QuietLoggingMixin, WebSocketServerProtocol):
    received: list[bytes]

    def onOpen(self) -> None:
        self.received = []

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.received.append(payload)
        self.sendMessage(payload, isBinary)


class LenientTransport(StringTransport):
    def unregisterProducer(self) -> None:
        self.producer = None


def open_connection(factory: WebSocketServerFactory) -> tuple[Quiet, StringTransport]:
    protocol = factory.buildProtocol(None)
    transport = LenientTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(wsframes.handshake("/"))
    assert transport.value().startswith(b"HTTP/1.1 101")
    transport.clear()
    return protocol, transport


@pytest.fixture
def factory() -> WebSocketServerFactory:
    factory = WebSocketServerFactory(reactor=MemoryReactorClock())
    factory.protocol = Quiet
    return factory


@pytest.fixture
def debug_logging() -> Iterator[None]:
    txaio.set_global_log_level("debug")
    try:
        yield
    finally:
        txaio.set_global_log_level("info")


def test_the_integer_masker_matches_autobahns_across_split_reads() -> None:
    rng = random.Random(1)
    for _ in range(2000):
        mask, size = os.urandom(4), rng.randint(0, 600)
        data = os.urandom(size)
        cuts = sorted(rng.sample(range(size + 1), min(3, size + 1)))
        pieces = [data[i:j] for i, j in zip([0, *cuts], [*cuts, size], strict=True) if data[i:j]]
        stock, ours = create_xor_masker(mask, size), _create_xor_masker(mask, size)
        assert b"".join(map(stock.process, pieces)) == b"".join(map(ours.process, pieces))
        assert stock.pointer() == ours.pointer() == size


@pytest.mark.parametrize("size", [0, 5, 125, 126, 511, 512, 513, 70_000])
def test_frames_in_and_out_are_unchanged(factory, size) -> None:
    protocol, transport = open_connection(factory)
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    half = wsframes.client_frame(payload, opcode=2)
    protocol.dataReceived(half[:7])
    protocol.dataReceived(half[7:])
    assert protocol.received == [payload]
    [(opcode, echoed, _)] = wsframes.parse_frames(transport.value())
    assert (opcode, echoed) == (2, payload)


def test_a_listener_added_in_on_message_still_hears_that_message(factory) -> None:
    heard: list[bytes] = []

    class Adder(Quiet):
        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            self.on("message", lambda payload, is_binary: heard.append(payload))

    factory.protocol = Adder
    protocol, _ = open_connection(factory)
    protocol.dataReceived(wsframes.client_frame(b"first"))
    assert heard == [b"first"]


def test_connection_counts_return_to_zero(factory) -> None:
    protocols = [open_connection(factory)[0] for _ in range(3)]
    assert factory.countConnections == 3
    for protocol in protocols:
        protocol.connectionLost(Failure(ConnectionDone()))
    assert factory.countConnections == 0


def test_with_debug_logging_on_autobahn_logs_as_usual(factory, debug_logging) -> None:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        protocol, _ = open_connection(factory)
        assert not protocol._quiet
        protocol.sendMessage(b"hi")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert any("sent {data_len}" in event.get("log_format", "") for event in events)


def test_with_debug_logging_off_no_debug_text_is_formatted(factory) -> None:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        protocol, _ = open_connection(factory)
        assert protocol._quiet
        protocol.sendMessage(b"hi")
        protocol.dataReceived(wsframes.client_frame(b"hello"))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not [e for e in events if e.get("log_level") is not None and e["log_level"].name == "debug"]
