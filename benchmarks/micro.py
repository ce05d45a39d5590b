"""
Micro-benchmark of the Autobahn layer on a StringTransport (no sockets).

Compares, per frame and per connection, Autobahn's stock
``WebSocketServerProtocol`` with the same protocol plus improto's
``QuietLoggingMixin``, and improto's real ``ChatServerProtocol`` (router and
in-memory backend included). Both test protocols do nothing in their
callbacks, so the difference is Autobahn's own per-frame / per-connection
cost that the mixin removes.

    python benchmarks/micro.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from typing import Any, Callable

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from improto._autobahn_quiet import QuietLoggingMixin

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
PAYLOAD = json.dumps({"username": "alice", "msg": "hello, world - 0123456789"}).encode()


def handshake_request(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\n"
        "Host: 127.0.0.1:9000\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode()


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client frame (RFC 6455 5.2), with a non-zero mask."""
    mask = b"\x12\x34\x56\x78"
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 0x10000:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def server_frame(payload: bytes) -> bytes:
    n = len(payload)
    assert n < 126
    return bytes((0x81, n)) + payload


CLOSE_FRAME = client_frame((1000).to_bytes(2, "big"), opcode=8)


class Transport(StringTransport):
    """StringTransport, but like a TCP transport it may unregister no producer."""

    def unregisterProducer(self) -> None:
        self.producer = None


class StockProtocol(WebSocketServerProtocol):
    """Autobahn as shipped; callbacks do nothing."""

    def onConnect(self, request: Any) -> None:
        return None

    def onOpen(self) -> None:
        pass

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        pass

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        pass


class QuietProtocol(QuietLoggingMixin, StockProtocol):
    """The same, with improto's mixin."""


def make_factory(protocol: type) -> WebSocketServerFactory:
    factory = WebSocketServerFactory()
    factory.protocol = protocol
    # The settings improto uses that matter here.
    factory.setProtocolOptions(openHandshakeTimeout=10, closeHandshakeTimeout=3,
                               autoPingInterval=30, autoPingTimeout=60)
    return factory


def open_protocol(factory: Any, path: str = "/ws/bench") -> tuple[Any, Transport]:
    proto = factory.buildProtocol(PEER)
    transport = Transport(peerAddress=PEER)
    proto.makeConnection(transport)
    proto.dataReceived(handshake_request(path))
    assert transport.value().startswith(b"HTTP/1.1 101"), transport.value()[:200]
    transport.clear()
    return proto, transport


def close_protocol(proto: Any, transport: Transport) -> None:
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    proto.dataReceived(CLOSE_FRAME)
    proto.connectionLost(Failure(ConnectionDone()))


# -- the measured operations ---------------------------------------------------


def bench_handshake(factory: Any, n: int, path_of: Callable[[int], str]) -> float:
    """Seconds per connection: connect, opening handshake, client close, lost."""
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    requests = [handshake_request(path_of(i)) for i in range(n)]
    done = Failure(ConnectionDone())
    t0 = time.perf_counter()
    for request in requests:
        proto = factory.buildProtocol(PEER)
        transport = Transport(peerAddress=PEER)
        proto.makeConnection(transport)
        proto.dataReceived(request)
        proto.dataReceived(CLOSE_FRAME)
        proto.connectionLost(done)
    return (time.perf_counter() - t0) / n


def bench_frames_in(factory: Any, n: int, per_read: int) -> float:
    """Seconds per frame received, ``per_read`` frames per dataReceived."""
    proto, transport = open_protocol(factory)
    chunk = client_frame(PAYLOAD) * per_read
    reads = n // per_read
    t0 = time.perf_counter()
    for _ in range(reads):
        proto.dataReceived(chunk)
    elapsed = time.perf_counter() - t0
    transport.clear()
    close_protocol(proto, transport)
    return elapsed / (reads * per_read)


def bench_send_data(factory: Any, n: int) -> float:
    """Seconds per prepared frame written with sendData (improto's broadcast)."""
    proto, transport = open_protocol(factory)
    wire = server_frame(PAYLOAD)
    send = proto.sendData
    t0 = time.perf_counter()
    for i in range(n):
        send(wire)
        if i & 1023 == 0:
            transport.clear()
    elapsed = time.perf_counter() - t0
    transport.clear()
    close_protocol(proto, transport)
    return elapsed / n


def bench_send_message(factory: Any, n: int) -> float:
    """Seconds per sendMessage (framing on every send: the naive broadcast)."""
    proto, transport = open_protocol(factory)
    send = proto.sendMessage
    t0 = time.perf_counter()
    for i in range(n):
        send(PAYLOAD)
        if i & 1023 == 0:
            transport.clear()
    elapsed = time.perf_counter() - t0
    transport.clear()
    close_protocol(proto, transport)
    return elapsed / n


# -- improto's own protocol, router included ----------------------------------


def improto_factory() -> Any:
    from improto.memory import MemoryBackend
    from improto.router import Router, RouterLimits
    from improto.settings import Settings
    from improto.websocket import ChatServerFactory
    from twisted.internet import reactor

    settings = Settings(rate=0, burst=0)
    backend = MemoryBackend()
    backend.start()
    router = Router(backend, limits=RouterLimits(settings.max_message_size, 0, 0))
    return ChatServerFactory(router, settings, reactor)


def bench_improto_group_in(factory: Any, n: int, members: int) -> float:
    """
    Seconds per group message (seed dialect) received by improto's
    ChatServerProtocol and broadcast to ``members`` other members.
    """
    others = [open_protocol(factory, f"/ws/member{i}") for i in range(members)]
    proto, transport = open_protocol(factory, "/ws/sender")
    frame = client_frame(PAYLOAD)
    t0 = time.perf_counter()
    for i in range(n):
        proto.dataReceived(frame)
        if i & 255 == 0:
            for _, t in others:
                t.clear()
    elapsed = time.perf_counter() - t0
    close_protocol(proto, transport)
    for p, t in others:
        t.clear()
        close_protocol(p, t)
    return elapsed / n


# -- driver ----------------------------------------------------------------------


def best_of(repeats: int, fn: Callable[[], float]) -> float:
    results = []
    for _ in range(repeats):
        gc.collect()
        results.append(fn())
    return min(results)


def run(quick: bool = False) -> list[dict[str, Any]]:
    scale = 0.2 if quick else 1.0
    n_frames = int(50_000 * scale)
    n_conns = int(3_000 * scale)
    repeats = 3
    stock = make_factory(StockProtocol)
    quiet = make_factory(QuietProtocol)
    chat = improto_factory()
    rows: list[dict[str, Any]] = []

    def pair(name: str, unit: str, fn: Callable[[Any], float]) -> None:
        # Interleave the variants so that drift hits both.
        s = best_of(repeats, lambda: fn(stock))
        q = best_of(repeats, lambda: fn(quiet))
        rows.append({"op": name, "unit": unit, "stock_us": s * 1e6, "quiet_us": q * 1e6})

    pair("handshake+close", "conn", lambda f: bench_handshake(f, n_conns, lambda i: f"/ws/u{i}"))
    pair("frame in (1 per read)", "frame", lambda f: bench_frames_in(f, n_frames, 1))
    pair("frame in (20 per read)", "frame", lambda f: bench_frames_in(f, n_frames, 20))
    pair("prepared frame out (sendData)", "frame", lambda f: bench_send_data(f, n_frames))
    pair("sendMessage out", "frame", lambda f: bench_send_message(f, n_frames))

    chat_hs = best_of(repeats, lambda: bench_handshake(chat, n_conns, lambda i: f"/ws/u{i}"))
    rows.append({"op": "improto ChatServerProtocol handshake+close (router, lobby)",
                 "unit": "conn", "stock_us": None, "quiet_us": chat_hs * 1e6})
    members = 100
    g = best_of(repeats, lambda: bench_improto_group_in(chat, max(200, n_frames // 50), members))
    rows.append({"op": f"improto group message in, {members} members out",
                 "unit": "msg", "stock_us": None, "quiet_us": g * 1e6})
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'operation':<58} {'stock µs':>10} {'improto µs':>11} {'ratio':>7}"]
    for r in rows:
        s = r["stock_us"]
        q = r["quiet_us"]
        s_text = f"{s:10.2f}" if s is not None else f"{'-':>10}"
        ratio = f"{s / q:6.2f}x" if s is not None else f"{'-':>7}"
        lines.append(f"{r['op'] + ' /' + r['unit']:<58} {s_text} {q:11.2f} {ratio}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    args = parser.parse_args()
    rows = run(args.quick)
    if args.json:
        json.dump(rows, sys.stdout)
        print()
    else:
        print(format_rows(rows))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
