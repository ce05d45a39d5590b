"""
improto.web.handshake against Autobahn's own processHandshake: for the same
request bytes and factory options, onConnect must be given the same request
and the client sent the same bytes, whichever path read it.
"""

from __future__ import annotations

import hashlib
import inspect
import random
from typing import Any

import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport

from improto.web import handshake

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
BASE = [
    ("Host", "localhost:8080"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", KEY),
    ("Sec-WebSocket-Version", "13"),
    ("Origin", "http://localhost:8080"),
    ("Sec-WebSocket-Protocol", "improto.v1, chat"),
    ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
]
#: What Autobahn's reading leaves on the protocol, for its later steps.
STATE = ("http_status_line", "http_headers", "http_request_uri", "http_request_path",
         "http_request_params", "http_request_host", "websocket_version", "websocket_protocols",
         "websocket_origin", "websocket_extensions", "_wskey", "data", "state",
         "websocket_protocol_in_use", "wasNotCleanReason", "peer", "http_response_data",
         "inside_message", "current_frame")
#: Timers the handshake arms or cancels: compared as armed or not.
TIMERS = ("openHandshakeTimeoutCall", "autoPingPendingCall")


REQUEST = ("peer", "headers", "host", "path", "params", "version", "origin", "protocols", "extensions")


class Transport(StringTransport):
    """Autobahn unregisters a producer it may not have registered."""

    def unregisterProducer(self) -> None:
        self.producer = None


class Probe(WebSocketServerProtocol):
    """Autobahn's protocol; ``fast`` reads plain requests with improto.web.handshake."""

    fast = True
    behaviour = "plain"
    seen: Any = None
    later: Deferred[Any] | None = None

    def processHandshake(self) -> None:
        if not (self.fast and handshake.open_plain(self)):
            super().processHandshake()

    def onConnect(self, request: Any) -> Any:
        self.seen = {name: getattr(request, name) for name in REQUEST}
        if self.behaviour == "deny":
            raise ConnectionDeny(403, "not you")
        if self.behaviour == "boom":
            raise RuntimeError("boom")
        chosen = "improto.v1" if "improto.v1" in request.protocols else None
        if self.behaviour == "later":
            self.later = Deferred()
            return self.later
        if self.behaviour == "bad-protocol":
            return "never-offered"
        return chosen


def run(raw: bytes, fast: bool, behaviour: str = "plain", **options: Any) -> dict[str, Any]:
    factory = WebSocketServerFactory()
    factory.protocol = Probe
    factory.externalPort = options.pop("externalPort", None)
    factory.countConnections = options.pop("countConnections", 0)
    factory.server = options.pop("server", factory.server)  # Autobahn's name and version
    factory.headers = options.pop("headers", factory.headers)
    factory.trackTimings = options.pop("trackTimings", factory.trackTimings)
    if options:
        factory.setProtocolOptions(**options)
    probe = factory.buildProtocol(PEER)
    probe.fast, probe.behaviour = fast, behaviour
    transport = Transport(peerAddress=PEER)
    probe.makeConnection(transport)
    probe.dataReceived(raw)
    if probe.later is not None:
        probe.later.callback(None)
    return {"sent": transport.value(), "request": probe.seen,
            **{name: getattr(probe, name, None) for name in STATE},
            **{name: getattr(probe, name, None) is not None for name in TIMERS},
            "extensions in use": [type(e).__name__ for e in getattr(probe, "websocket_extensions_in_use", ())]}


def request(lines: list[tuple[str, str]], line: str = "GET /ws/alice?x=1&y=%E2%9C%93 HTTP/1.1",
            rest: bytes = b"") -> bytes:
    head = line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in lines) + "\r\n"
    return head.encode("latin-1") + rest


def same(raw: bytes, behaviour: str = "plain", **options: Any) -> dict[str, Any]:
    fast, slow = run(raw, True, behaviour, **options), run(raw, False, behaviour, **options)
    assert fast == slow, raw
    return fast


def test_a_browser_request_takes_the_short_way_and_opens_the_same() -> None:
    raw = request(BASE)
    assert handshake.read_plain(raw, None) is not None
    opened = same(raw)
    assert opened["sent"].startswith(b"HTTP/1.1 101 ")
    assert opened["request"]["protocols"] == ["improto.v1", "chat"]
    assert opened["request"]["params"] == {"x": ["1"], "y": ["\u2713"]}
    assert opened["websocket_protocol_in_use"] == "improto.v1"


def test_bytes_after_the_head_are_read_as_frames_on_both_ways() -> None:
    close_frame = b"\x88\x82abcd" + bytes([0x03 ^ 0x61, 0xE8 ^ 0x62])
    closed = same(request(BASE, rest=close_frame))
    # The close frame was read: answered with a close frame (1000), and dropped.
    assert closed["sent"].endswith(b"\x88\x02\x03\xe8")
    assert closed["state"] == WebSocketServerProtocol.STATE_CLOSED


@pytest.mark.parametrize("behaviour", ["deny", "boom", "later"])
def test_what_onconnect_answers_is_handled_the_same(behaviour: str) -> None:
    same(request(BASE), behaviour)


def test_a_subprotocol_the_client_did_not_offer_is_a_500_not_a_hang() -> None:
    answered = run(request(BASE), True, "bad-protocol")
    assert answered["sent"].startswith(b"HTTP/1.1 500 Internal server error: protocol accepted")
    assert answered["state"] == WebSocketServerProtocol.STATE_CLOSED


#: sha256 of Autobahn's succeedHandshake, which handshake._answer_plain
#: re-states for a request with nothing to negotiate, as reviewed.
REVIEWED_SUCCEED = "fb43d387929cf20640844b409a55bdfc0a643b20bb987af9a96c795f9678a9e8"
NOTHING_TO_NEGOTIATE = [(k, v) for k, v in BASE if k != "Sec-WebSocket-Extensions"]


def test_succeed_handshake_is_the_reviewed_one() -> None:
    source = inspect.getsource(WebSocketServerProtocol.succeedHandshake)
    assert hashlib.sha256(source.encode()).hexdigest() == REVIEWED_SUCCEED, (
        "Autobahn's succeedHandshake changed: re-review improto.web.handshake._answer_plain"
    )


def counting_stock_answers(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Each call of Autobahn's succeedHandshake on a Probe, from now on."""
    calls: list[Any] = []

    def succeed(self: Probe, res: Any) -> None:
        calls.append(res)
        WebSocketServerProtocol.succeedHandshake(self, res)

    monkeypatch.setattr(Probe, "succeedHandshake", succeed, raising=False)
    return calls


@pytest.mark.parametrize("options", [
    {}, {"server": None}, {"autoPingInterval": 5, "openHandshakeTimeout": 3},
    {"openHandshakeTimeout": 0}, {"headers": {"X-A": ["1", "2"]}}, {"trackTimings": True},
])
@pytest.mark.parametrize("offered", [True, False])
def test_a_request_with_nothing_to_negotiate_is_answered_the_same(options, offered, monkeypatch) -> None:
    lines = NOTHING_TO_NEGOTIATE if offered else [
        (k, v) for k, v in NOTHING_TO_NEGOTIATE if k != "Sec-WebSocket-Protocol"]
    stock = counting_stock_answers(monkeypatch)
    answered = same(request(lines), **options)
    assert answered["sent"].startswith(b"HTTP/1.1 101 ")
    assert answered["websocket_protocol_in_use"] == ("improto.v1" if offered else None)
    # Autobahn's answer ran for the slow way, and for the short way only where
    # there is something to add (extra headers). With trackTimings on, Autobahn
    # tracks none (its setTrackTimings compares the option it just copied).
    assert len(stock) == (2 if "headers" in options else 1)


def test_an_offered_extension_is_negotiated_by_autobahn(monkeypatch) -> None:
    from autobahn.websocket.compress import PerMessageDeflateOfferAccept

    stock = counting_stock_answers(monkeypatch)
    answered = same(request(BASE), perMessageCompressionAccept=lambda offers: PerMessageDeflateOfferAccept(offers[0]))
    assert b"Sec-WebSocket-Extensions: permessage-deflate" in answered["sent"]
    assert len(stock) == 2


HOSTILE_LINES = [
    "POST /ws/a HTTP/1.1", "GET /ws/a HTTP/1.0", "GET  /ws/a HTTP/1.1", "GET /ws/a#frag HTTP/1.1",
    "GET /ws/a;p=1 HTTP/1.1", "GET //evil/ws/a HTTP/1.1", "GET http://h/ws/a HTTP/1.1",
    "GET /ws/\u00fc HTTP/1.1", "GET /ws/a?q&q=1&q=2&=x HTTP/1.1", "GET /ws/a? HTTP/1.1",
]
VALUES = {
    "Host": ["localhost", "localhost:abc", "[::1]", "[::1]:8080", "h:8081", "h: 80", "h:+80", "", "h:"],
    "Upgrade": ["WebSocket", "websocket, h2c", "h2c", " websocket\t", ""],
    "Connection": ["keep-alive, Upgrade", "close", "UPGRADE", ""],
    "Sec-WebSocket-Key": [KEY[:-3] + "==", KEY[:-2] + "AA", "!" + KEY[1:], " " + KEY, KEY + " "],
    "Sec-WebSocket-Version": ["8", "14", "13 ", "abc", "+13", "013", ""],
    "Sec-WebSocket-Protocol": ["a, a", "", " improto.v1 ", "improto.v1,,chat"],
    "Origin": ["null", "file://", "http://", "garbage", "https://example.com:99999", "HTTP://LOCALHOST:8080",
               "http://localhost", "https://other.example"],
    "Sec-WebSocket-Extensions": ["permessage-deflate; server_no_context_takeover", "foo",
                                 "permessage-deflate; client_max_window_bits=7", "", ",,"],
}
EXTRA = [("X-Forwarded-For", "10.0.0.1, 10.0.0.2"), ("Cookie", "a=b"), ("User-Agent", "t\u00e9st"),
         ("Bad Name", "x"), ("X-Ctl", "a\x01b"), ("x-del", "a\x7fb")]
OPTIONS = [{}, {"allowedOrigins": ["http://localhost:*"]}, {"externalPort": 8080},
           {"trustXForwardedFor": 1}, {"allowNullOrigin": True},
           {"maxConnections": 2, "countConnections": 2}]


def mutate(rng: random.Random) -> bytes:
    lines = list(BASE)
    line = "GET /ws/alice?x=1 HTTP/1.1"
    rest = b""
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(7)
        if kind == 0:
            line = rng.choice(HOSTILE_LINES)
        elif kind == 1:
            name = rng.choice(list(VALUES))
            lines = [(k, rng.choice(VALUES[name]) if k == name else v) for k, v in lines]
        elif kind == 2 and lines:
            lines.pop(rng.randrange(len(lines)))
        elif kind == 3 and lines:
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(lines))
        elif kind == 4:
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(EXTRA))
        elif kind == 5 and lines:
            i = rng.randrange(len(lines))
            k, v = lines[i]
            lines[i] = (rng.choice([k.upper(), k.lower(), k.swapcase()]), v)
        else:
            rest = rng.choice([b"\x81\x80abcd", b"junk", b"\r\n", b"GET / HTTP/1.1\r\n\r\n"])
    raw = request(lines, line, rest)
    if rng.random() < 0.05:  # bare LF, obs-fold, a split CRLF
        raw = raw.replace(b"\r\nUpgrade", rng.choice([b"\nUpgrade", b"\r\n Upgrade", b"\rUpgrade"]), 1)
    return raw


def test_hostile_and_unusual_requests_get_what_autobahn_gives_them() -> None:
    rng = random.Random(6455)
    fast_ways = 0
    for _ in range(1500):
        raw = mutate(rng)
        options = rng.choice(OPTIONS)
        same(raw, **dict(options))
        fast_ways += handshake.read_plain(raw, options.get("externalPort")) is not None
    # Both kinds were tried: requests the short way reads, and the others.
    assert 100 < fast_ways < 1400


@pytest.mark.parametrize("raw", [
    request(BASE)[:-2],  # the head is not complete yet
    request([(k, v) for k, v in BASE if k != "Host"]),
    request(BASE + [("Host", "again")]),
    request(BASE, "GET /ws/a#x HTTP/1.1"),
    request(BASE).replace(b"13", b"8"),
])
def test_what_the_short_way_leaves_to_autobahn(raw: bytes) -> None:
    assert handshake.read_plain(raw, None) is None


def test_without_autobahns_origin_helpers_every_request_is_autobahns(monkeypatch) -> None:
    monkeypatch.setattr(handshake, "_url_to_origin", None)
    answers: list[bool] = []
    real = handshake.open_plain
    monkeypatch.setattr(handshake, "open_plain", lambda link: answers.append(real(link)) or answers[-1])
    assert same(request(BASE))["sent"].startswith(b"HTTP/1.1 101")
    assert answers == [False]
