"""The whole server's site in-process: a WebSocket upgrade through twisted.web."""

from __future__ import annotations

import gc
import weakref

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from improto import tap

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
UPGRADE = (
    b"GET /ws/alice HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


class Transport(StringTransport):
    def unregisterProducer(self) -> None:
        self.producer = None


@pytest.fixture
def built():
    """What ``twistd improto`` builds (its backend started; nothing listens)."""
    options = tap.Options()
    options.parseOptions([])
    service = tap.build_service(options, endpoint=object())
    service.router.backend.start()
    yield service
    service.router.backend.stop()


@pytest.fixture
def site(built):
    return built.site


def test_the_http_channel_is_freed_once_a_websocket_takes_over(site):
    """Not left in a reference cycle with its request for the garbage collector."""
    gc.disable()
    try:
        channel = site.buildProtocol(PEER)
        transport = Transport(peerAddress=PEER)
        transport.protocol = channel
        channel.makeConnection(transport)
        channel.dataReceived(UPGRADE)
        assert transport.value().startswith(b"HTTP/1.1 101 ")
        assert transport.protocol is not channel
        gone = weakref.ref(channel)
        request = weakref.ref(channel.requests[0]) if channel.requests else None
        del channel
        assert gone() is None
        assert request is None or request() is None
        assert site.pending.count("127.0.0.1") == 0
    finally:
        gc.enable()
