"""The whole server's site in-process: a WebSocket upgrade through twisted.web."""

from __future__ import annotations

import gc
import weakref

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from improto import tap
from improto.web.handshake import parse_plain
from improto.web.site import GuardedChannel
from improto.web.upgrade import FirstRead

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


def connect(site, *reads: bytes) -> tuple[FirstRead | GuardedChannel, Transport]:
    """A connection to ``site`` as a TCP transport makes it; the protocol the site built."""
    first = site.buildProtocol(PEER)
    transport = Transport(peerAddress=PEER)
    transport.protocol = first
    first.makeConnection(transport)
    for data in reads:
        transport.protocol.dataReceived(data)
    return first, transport


def channels_made(site, monkeypatch) -> list[GuardedChannel]:
    made: list[GuardedChannel] = []
    make = site.http_channel
    monkeypatch.setattr(site, "http_channel", lambda *a: made.append(make(*a)) or made[-1])
    return made


def requests_made(site, monkeypatch) -> list[object]:
    made: list[object] = []
    factory = site.requestFactory
    monkeypatch.setattr(site, "requestFactory", lambda *a, **kw: made.append(1) or factory(*a, **kw))
    return made


@pytest.mark.parametrize("reads", [[UPGRADE], [UPGRADE[:20], UPGRADE[20:]]], ids=["direct", "twisted.web"])
def test_the_http_channel_is_freed_once_a_websocket_takes_over(site, monkeypatch, reads):
    """Not left in a reference cycle with its request for the garbage collector."""
    channels = channels_made(site, monkeypatch)
    gc.disable()
    try:
        first, transport = connect(site, *reads)
        assert transport.value().startswith(b"HTTP/1.1 101 ")
        assert transport.protocol is not first
        gone = [weakref.ref(first)] + [weakref.ref(c) for c in channels]
        requests = [weakref.ref(r) for c in channels for r in c.requests]
        assert len(gone) == (1 if len(reads) == 1 else 2)
        del first
        channels.clear()
        assert [ref() for ref in gone + requests] == [None] * len(gone + requests)
        assert site.pending.count("127.0.0.1") == 0
        assert len(site.first_reads) == 0
    finally:
        gc.enable()


def test_an_upgrade_in_one_read_skips_twisted_web_and_is_answered_alike(site, monkeypatch):
    made = requests_made(site, monkeypatch)
    channels = channels_made(site, monkeypatch)
    _, direct = connect(site, UPGRADE)
    assert made == [] and channels == []
    _, split = connect(site, UPGRADE[:30], UPGRADE[30:])
    assert made == [1] and len(channels) == 1
    assert direct.value() == split.value()
    assert direct.value().startswith(b"HTTP/1.1 101 ")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in direct.value()


@pytest.mark.parametrize(("data", "status"), [
    (UPGRADE.replace(b"/ws/alice", b"/healthz"), b"404"),  # a fixed route
    (UPGRADE.replace(b"/ws/alice", b"/%68ealthz"), b"404"),  # the same, percent-encoded
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
    request = parse_plain(data, 16384)
    assert request is not None and request.path.encode() == path


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
    assert parse_plain(data, 16384) is None


def test_a_head_over_the_limit_is_left_to_twisted_web():
    assert parse_plain(HEAD, len(HEAD)) is not None
    assert parse_plain(HEAD, len(HEAD) - 4) is None


def test_a_factory_that_builds_no_protocol_leaves_the_request_to_twisted_web(site, monkeypatch):
    class Refusing:
        def buildProtocol(self, addr):
            return None

    monkeypatch.setattr(site, "upgrades", lambda path: Refusing())
    made = requests_made(site, monkeypatch)
    channels = channels_made(site, monkeypatch)
    _, transport = connect(site, UPGRADE)
    assert made == [1] and len(channels) == 1
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


# -- before the first read --------------------------------------------------------


def clock_site(handshake_timeout: float, idle_timeout: float):
    """A site on a fake clock whose root routes upgrades (none): connections start as FirstRead."""
    from twisted.internet.task import Clock
    from twisted.web.resource import Resource

    from improto.settings import Settings
    from improto.web.site import GuardedSite

    class Routes(Resource):
        def upgrade_factory(self, path: bytes) -> None:
            return None

    clock = Clock()
    settings = Settings(handshake_timeout=handshake_timeout, idle_timeout=idle_timeout,
                        max_handshakes_per_ip=0)
    return clock, GuardedSite(Routes(), settings, clock)


def test_a_connection_that_sends_nothing_is_refused_at_the_request_deadline():
    clock, site = clock_site(handshake_timeout=2, idle_timeout=30)
    first, transport = connect(site)
    assert isinstance(first, FirstRead)
    assert site.pending.count("127.0.0.1") == 1
    assert len(site.timers) == 0  # no HTTP channel, no timer of its own
    clock.advance(1.99)
    assert transport.value() == b""
    clock.advance(0.01)
    assert transport.value().startswith(b"HTTP/1.1 408 Request Timeout")
    assert isinstance(transport.protocol, GuardedChannel)
    assert len(site.first_reads) == 0


def test_the_first_requests_deadline_counts_from_the_connection_not_its_first_byte():
    """A client that waits before its first byte gets no more time (slowloris)."""
    clock, site = clock_site(handshake_timeout=2, idle_timeout=30)
    _, transport = connect(site)
    clock.advance(1.5)
    transport.protocol.dataReceived(b"GET / HTTP/1.1\r\n")
    assert isinstance(transport.protocol, GuardedChannel)
    clock.advance(0.5 + 0.2)  # due at 2 s after the connection, run at most one bucket later
    assert transport.value().startswith(b"HTTP/1.1 408 Request Timeout")


def test_where_the_idle_timeout_is_shorter_a_silent_connection_is_closed_quietly():
    clock, site = clock_site(handshake_timeout=10, idle_timeout=1)
    _, transport = connect(site)
    clock.advance(1)
    assert transport.disconnecting and transport.value() == b""


def test_without_timeouts_nothing_waits_for_a_first_read():
    clock, site = clock_site(handshake_timeout=0, idle_timeout=0)
    connect(site)
    assert len(site.first_reads) == 0 and clock.getDelayedCalls() == []


def test_connections_waiting_for_a_first_read_share_one_reactor_call():
    clock, site = clock_site(handshake_timeout=2, idle_timeout=0)
    transports = []
    for _ in range(50):
        transports.append(connect(site)[1])
        clock.advance(0.01)
    assert len(clock.getDelayedCalls()) == 1
    transports[10].protocol.dataReceived(b"GET / HTTP/1.1\r\n")  # no longer waiting
    clock.advance(1.595)  # at 2.095 s: the ten made in the first 0.095 s are due
    refused = [t.value().startswith(b"HTTP/1.1 408") for t in transports]
    assert refused == [True] * 10 + [False] * 40
    assert [c.func.__name__ for c in clock.getDelayedCalls()].count("_run") == 1  # the next one's


def test_a_connection_lost_before_its_first_read_gives_back_its_slot():
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    _, site = clock_site(handshake_timeout=2, idle_timeout=30)
    first, _ = connect(site)
    first.connectionLost(Failure(ConnectionDone()))
    assert site.pending.count("127.0.0.1") == 0
    assert len(site.first_reads) == 0


def test_a_direct_upgrades_head_is_parsed_once_and_not_kept(site, monkeypatch):
    from improto.web import handshake, upgrade

    parsed: list[bytes] = []
    real = handshake.parse_plain

    def counting(data, limit=None):
        parsed.append(data)
        return real(data, limit)

    monkeypatch.setattr(handshake, "parse_plain", counting)
    monkeypatch.setattr(upgrade, "parse_plain", counting)
    _, transport = connect(site, UPGRADE)
    assert transport.value().startswith(b"HTTP/1.1 101 ")
    assert len(parsed) == 1
    assert "plain_request" not in vars(transport.protocol)
    # Split over two reads: the first is not a whole head; the handshake parses the rebuilt one.
    parsed.clear()
    _, transport = connect(site, UPGRADE[:30], UPGRADE[30:])
    assert transport.value().startswith(b"HTTP/1.1 101 ") and len(parsed) == 2
