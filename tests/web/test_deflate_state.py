"""
Context-free connections hold no zlib compressor of their own and create
none per message: every frame comes from framing's one compressor per
setting, and each still inflates on its own (``wsframes.parse_frames``
inflates every frame with a fresh decompressor).
"""

from __future__ import annotations

import json
import zlib

import pytest
from twisted.internet.testing import MemoryReactorClock

from improto.backends.memory import MemoryBackend
from improto.router import Router, RouterLimits
from improto.settings import Settings
from improto.web import framing
from improto.web.chat import ChatServerFactory
from tests.web.test_websocket import DEFLATE, NATIVE, Client


@pytest.fixture
def factory():
    backend = MemoryBackend()
    backend.start()
    router = Router(backend, limits=RouterLimits(max_message_size=1000))
    return ChatServerFactory(router, Settings(), MemoryReactorClock())


@pytest.fixture
def compressobj_calls(monkeypatch):
    """Every zlib.compressobj created from here on, by Autobahn or by us."""
    calls: list[tuple] = []
    real = zlib.compressobj

    def counting(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(zlib, "compressobj", counting)
    monkeypatch.setattr(framing, "_compressors", {})
    return calls


def test_compressing_connections_share_one_compressor(factory, compressobj_calls):
    clients = [Client(factory, f"/ws/u{i}", DEFLATE + NATIVE) for i in range(3)]
    for i, client in enumerate(clients):
        for n in range(4):
            client.send(json.dumps({"type": "private", "to": "u0", "msg": f"hi {i} {n}", "id": n}))
    assert len(compressobj_calls) == 1
    for client in clients:
        pmce = client.protocol._perMessageCompress
        assert isinstance(pmce, framing.ContextFreeDeflate)
        assert pmce._compressor is None
    delivered = clients[0].messages()
    assert delivered[0]["type"] == "welcome"
    assert [m["msg"] for m in delivered if m["type"] == "private"] == [
        f"hi {i} {n}" for i in (1, 2) for n in range(4)
    ]
    acks = [m for m in clients[2].messages() if m["type"] == "ack"]
    assert [a["id"] for a in acks] == ["0", "1", "2", "3"]


def test_every_frame_of_the_shared_compressor_inflates_alone():
    framing._compressors.clear()
    texts = [(f"chat message {n} " * 10).encode() for n in range(5)]
    for text in texts:
        wire = framing.deflate(text, 15, 8)
        assert zlib.decompressobj(-15).decompress(wire + b"\x00\x00\xff\xff") == text
    # The same bytes as a compressor that never saw the earlier messages.
    fresh = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15, 8)
    assert framing.deflate(texts[0], 15, 8) == (
        fresh.compress(texts[0]) + fresh.flush(zlib.Z_SYNC_FLUSH)
    )[:-4]


def test_a_client_that_asks_for_a_smaller_window_gets_its_own_shared_setting(factory):
    small = Client(factory, "/ws/small", DEFLATE.replace("\r\n", "; server_max_window_bits=10\r\n"))
    big = Client(factory, "/ws/big", DEFLATE)
    assert small.protocol.compression_key == (10, 8)
    assert big.protocol.compression_key == (15, 8)


def test_the_client_is_asked_for_a_small_window_when_its_offer_allows(factory):
    asked = Client(factory, "/ws/asked", DEFLATE)
    assert f"client_max_window_bits={framing.CLIENT_WINDOW_BITS}".encode() in asked.response
    assert asked.protocol._perMessageCompress.client_max_window_bits == framing.CLIENT_WINDOW_BITS
    bare = Client(factory, "/ws/bare", "Sec-WebSocket-Extensions: permessage-deflate\r\n")
    assert b"permessage-deflate" in bare.response and b"client_max_window_bits" not in bare.response


@pytest.mark.parametrize("offered, asked", [("10", 10), ("15", 11), ('"9"', 9)])
def test_never_more_than_the_client_offered(factory, offered, asked):
    header = f"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits={offered}\r\n"
    client = Client(factory, "/ws/w", header)
    assert client.response.startswith(b"HTTP/1.1 101")
    assert f"client_max_window_bits={asked}".encode() in client.response
    assert client.protocol._perMessageCompress.client_max_window_bits == asked
