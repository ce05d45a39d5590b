"""The whole server's site in-process: a WebSocket upgrade through twisted.web."""

from __future__ import annotations

import gc
import weakref

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from improto import tap
from improto.web.site import GuardedChannel
from improto.web.upgrade import upgrade_path

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


def connect(site, *reads: bytes) -> tuple[GuardedChannel, Transport]:
    channel = site.buildProtocol(PEER)
    transport = Transport(peerAddress=PEER)
    transport.protocol = channel
    channel.makeConnection(transport)
    for data in reads:
        transport.protocol.dataReceived(data)
    return channel, transport


def requests_made(site, monkeypatch) -> list[object]:
    made: list[object] = []
    factory = site.requestFactory
    monkeypatch.setattr(site, "requestFactory", lambda *a, **kw: made.append(1) or factory(*a, **kw))
    return made


@pytest.mark.parametrize("reads", [[UPGRADE], [UPGRADE[:20], UPGRADE[20:]]], ids=["direct", "twisted.web"])
def test_the_http_channel_is_freed_once_a_websocket_takes_over(site, reads):
    """Not left in a reference cycle with its request for the garbage collector."""
    gc.disable()
    try:
        channel, transport = connect(site, *reads)
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


def test_an_upgrade_in_one_read_skips_twisted_web_and_is_answered_alike(site, monkeypatch):
    made = requests_made(site, monkeypatch)
    _, direct = connect(site, UPGRADE)
    assert made == []
    _, split = connect(site, UPGRADE[:30], UPGRADE[30:])
    assert made == [1]
    assert direct.value() == split.value()
    assert direct.value().startswith(b"HTTP/1.1 101 ")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in direct.value()


@pytest.mark.parametrize(("data", "status"), [
    (UPGRADE.replace(b"/ws/alice", b"/healthz"), b"404"),  # a fixed route
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"200"),  # the page
    (UPGRADE.replace(b"/ws/alice", b"/ws"), b"404"),
])
def test_what_is_not_a_chat_upgrade_goes_to_twisted_web(site, monkeypatch, data, status):
    made = requests_made(site, monkeypatch)
    _, transport = connect(site, data)
    assert made == [1]
    assert transport.value().startswith(b"HTTP/1.1 " + status)


def test_frames_right_after_the_head_reach_the_websocket(site):
    from tests import wsframes

    _, transport = connect(site, UPGRADE + wsframes.client_frame((1000).to_bytes(2, "big"), opcode=8))
    response = transport.value()
    assert response.startswith(b"HTTP/1.1 101 ")
    assert response.endswith(b"\x88\x02\x03\xe8")  # the close answered


HEAD = UPGRADE


@pytest.mark.parametrize(("data", "path"), [
    (HEAD, b"/ws/alice"),
    (HEAD.replace(b"/ws/alice", b"/ws/al%20ice?resume=x"), b"/ws/al%20ice"),
    (HEAD.replace(b"Upgrade: websocket", b"UPGRADE:WebSocket "), b"/ws/alice"),
    (HEAD + b"\x81\x85extra", b"/ws/alice"),
])
def test_plain_upgrade_heads(data, path):
    assert upgrade_path(data, 16384) == path


@pytest.mark.parametrize("data", [
    HEAD[:-2],  # not all there yet
    HEAD.replace(b"GET", b"POST"),
    HEAD.replace(b"HTTP/1.1", b"HTTP/1.0"),
    HEAD.replace(b"GET /ws/alice", b"GET http://x/ws/alice"),
    HEAD.replace(b"Upgrade: websocket", b"Upgrade: h2c"),
    HEAD.replace(b"Upgrade: websocket\r\n", b""),
    HEAD.replace(b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\n"),
    HEAD.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n"),
    HEAD.replace(b"Host: ", b"Host:\r\n 127.0.0.1:9000\r\nX: "),  # a folded line
    HEAD.replace(b"127.0.0.1", "h\u00f6st".encode()),
    HEAD.replace(b"\r\nHost", b"\nHost"),
    HEAD.replace(b"Host:", b"Ho st:"),
])
def test_anything_else_is_left_to_twisted_web(data):
    assert upgrade_path(data, 16384) is None


def test_a_head_over_the_limit_is_left_to_twisted_web():
    assert upgrade_path(HEAD, len(HEAD)) == b"/ws/alice"
    assert upgrade_path(HEAD, len(HEAD) - 4) is None


def test_a_factory_that_builds_no_protocol_leaves_the_request_to_twisted_web(site, monkeypatch):
    channels: list[GuardedChannel] = []
    armed: list[bool] = []

    class Refusing:
        def buildProtocol(self, addr):
            armed.append(channels[0]._deadline is not None)
            return None

    monkeypatch.setattr(site, "upgrades", lambda path: Refusing())
    made = requests_made(site, monkeypatch)
    build = site.buildProtocol
    monkeypatch.setattr(site, "buildProtocol", lambda addr: channels.append(build(addr)) or channels[-1])
    _, transport = connect(site, UPGRADE)
    assert armed == [True]  # nothing of the channel was undone for the attempt
    assert made == [1]
    assert transport.value().startswith(b"HTTP/1.1 101 ")


def test_request_deadlines_run_on_the_sites_bucket_timer():
    from twisted.internet.task import Clock
    from twisted.web.resource import Resource

    from improto.settings import Settings
    from improto.web.site import GuardedSite

    clock = Clock()
    site = GuardedSite(Resource(), Settings(handshake_timeout=2, idle_timeout=30), clock)
    slow, slow_transport = connect(site, b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert slow.callLater == site.timers.call_later
    assert len(site.timers) == 2  # the request deadline and Twisted's idle timeout
    clock.advance(1.9)
    assert slow_transport.value() == b""
    clock.advance(0.35)  # due at 2 s, run at most one bucket (0.2 s) later
    assert slow_transport.value().startswith(b"HTTP/1.1 408 Request Timeout")


def test_an_upgraded_connection_leaves_no_http_timer_armed(built):
    site = built.site
    before = len(site.timers)
    connect(site, UPGRADE)
    assert len(site.timers) == before
