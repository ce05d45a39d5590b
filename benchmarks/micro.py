"""
Micro-benchmark of the Autobahn layer on a StringTransport (no sockets).

Compares, per frame and per connection, stock Autobahn with Autobahn plus
improto's one mitigation, ``improto.web.quiet`` (lazy debug-log arguments):
first a ``WebSocketServerProtocol`` with callbacks that do nothing (so the
difference is Autobahn's own cost that the mitigation removes), then
improto's real ``ChatServerProtocol`` (router and in-memory backend
included). Each pair runs the very same classes, ``quiet.uninstall()`` for
"stock" and ``quiet.install()`` for "improto": they differ in nothing else
(backpressure included). Then how an improto connection's cost grows with
the number of members in the lobby.

``--options`` instead compares, on the bare protocol, the ways to make
Autobahn's logging cheaper that do not re-state its methods (the numbers
in ``docs/upstream/README.md``). Run with ``PYTHONPATH`` pointing at an
Autobahn with ``docs/upstream/autobahn-lazy-debug-log.patch`` applied, the
"stock" column is that patched Autobahn.

``--instructions`` counts instructions per operation with callgrind
(valgrind), which the load on a shared machine does not disturb.

    python benchmarks/micro.py [--quick] [--json] [--no-boost] [--options]
    python benchmarks/micro.py --instructions [--ops frame-in,private] [--json]
    python benchmarks/micro.py --instructions --ops site-handshake,ceiling-handshake --modes improto
    python benchmarks/micro.py --instructions --ops redis-private,private --modes improto

The third compares a connection through improto's whole site with one of
the in-stack ceiling (``servers/autobahn_ceiling.py``), the peer the
handshake target is set against. The last counts improto's private
message on the Redis backend (``redis-private``: a real redis-server on a
free port, 64 messages a turn, the reactor iterated until each is
delivered; only improto's process is counted) beside the memory
backend's (``private``): the part of the benchmark's Redis private row
that rounds on a busy machine cannot resolve (repeatable to about 0.3%).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

import improto.web.link  # noqa: F401 - installs improto.web.quiet, as the server does
from improto.web import quiet

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


CLOSE_FRAME = client_frame((1000).to_bytes(2, "big"), opcode=8)


class Transport(StringTransport):
    """StringTransport, but like a TCP transport it may unregister no producer."""

    def unregisterProducer(self) -> None:
        self.producer = None

    def lose(self, reason: Any) -> None:
        """What a TCP transport does when the socket is gone: forget its
        protocol and producer (``tcp.Connection``/``FileDescriptor.connectionLost``),
        then tell the protocol."""
        protocol = self.protocol
        del self.protocol
        if self.producer is not None:
            self.producer.stopProducing()
            self.producer = None
        protocol.connectionLost(reason)


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


class _NullLogger:
    """A txaio-Logger-like object on which every level is a no-op."""

    def _no_op(self, *args: Any, **kwargs: Any) -> None:
        return None

    debug = info = warn = error = critical = failure = trace = _no_op


class NullLoggerProtocol(StockProtocol):
    """Option (b): ``log`` is a null logger (the arguments are still built)."""

    log = _NullLogger()


def stock_autobahn(fn: Callable[[], float]) -> Callable[[], float]:
    """``fn`` run on stock Autobahn: improto's mitigation undone meanwhile."""

    def run() -> float:
        quiet.uninstall()
        try:
            return fn()
        finally:
            quiet.install()

    return run


def make_factory(protocol: type[WebSocketServerProtocol]) -> WebSocketServerFactory:
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

#: Set by ``--one`` under callgrind: loops then run inside ``functools.reduce``,
#: the one C function callgrind collects in (``--toggle-collect``).
COUNTING = False


def measure(loop: Callable[[], Any]) -> float:
    """Seconds ``loop()`` takes; under ``--one``, also the only code callgrind counts."""
    if COUNTING:
        functools.reduce(lambda acc, _: loop(), (None,), None)
        return 0.0
    t0 = time.perf_counter()
    loop()
    return time.perf_counter() - t0



def bench_handshake(factory: Any, n: int, path_of: Callable[[int], str]) -> float:
    """Seconds per connection: connect, opening handshake, client close, lost."""
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    requests = [handshake_request(path_of(i)) for i in range(n)]
    done = Failure(ConnectionDone())

    def loop() -> None:
        for request in requests:
            proto = factory.buildProtocol(PEER)
            transport = Transport(peerAddress=PEER)
            proto.makeConnection(transport)
            proto.dataReceived(request)
            proto.dataReceived(CLOSE_FRAME)
            proto.connectionLost(done)

    return measure(loop) / n


def bench_frames_in(factory: Any, n: int, per_read: int) -> float:
    """Seconds per frame received, ``per_read`` frames per dataReceived."""
    proto, transport = open_protocol(factory)
    chunk = client_frame(PAYLOAD) * per_read
    reads = n // per_read

    def loop() -> None:
        for _ in range(reads):
            proto.dataReceived(chunk)

    elapsed = measure(loop)
    transport.clear()
    close_protocol(proto, transport)
    return elapsed / (reads * per_read)


def bench_send_prepared(factory: Any, n: int) -> float:
    """Seconds per prepared frame written (improto's uncompressed broadcast:
    ``sendPreparedMessage``, which is ``sendData`` of the framed bytes)."""
    proto, transport = open_protocol(factory)
    prepared = factory.prepareMessage(PAYLOAD)
    send = proto.sendPreparedMessage

    def loop() -> None:
        for i in range(n):
            send(prepared)
            if i & 1023 == 0:
                transport.clear()

    elapsed = measure(loop)
    transport.clear()
    close_protocol(proto, transport)
    return elapsed / n


def bench_send_message(factory: Any, n: int) -> float:
    """Seconds per sendMessage (framing on every send: the naive broadcast)."""
    proto, transport = open_protocol(factory)
    send = proto.sendMessage

    def loop() -> None:
        for i in range(n):
            send(PAYLOAD)
            if i & 1023 == 0:
                transport.clear()

    elapsed = measure(loop)
    transport.clear()
    close_protocol(proto, transport)
    return elapsed / n


# -- improto's own protocol, router included ----------------------------------


def improto_factory() -> Any:
    from twisted.internet import reactor

    from improto.backends.memory import MemoryBackend
    from improto.router import Router, RouterLimits
    from improto.settings import Settings
    from improto.web.chat import ChatServerFactory

    # One address, hundreds of connections: no per-address or per-user limit.
    settings = Settings(max_connections_per_ip=0, max_connections_per_user=0)
    backend = MemoryBackend()
    backend.start()
    router = Router(backend, limits=RouterLimits(rate=0, burst=0))
    return ChatServerFactory(router, settings, reactor)


def bench_improto_group_in(factory: Any, n: int, members: int) -> float:
    """
    Seconds per group message (seed dialect) received by improto's
    ChatServerProtocol and broadcast to ``members`` other members.
    """
    others = [open_protocol(factory, f"/ws/member{i}") for i in range(members)]
    proto, transport = open_protocol(factory, "/ws/sender")
    frame = client_frame(PAYLOAD)

    def loop() -> None:
        for i in range(n):
            proto.dataReceived(frame)
            if i & 15 == 0:
                for _, t in others:
                    t.clear()

    elapsed = measure(loop)
    close_protocol(proto, transport)
    for p, t in others:
        t.clear()
        close_protocol(p, t)
    return elapsed / n


def bench_improto_private_in(factory: Any, n: int) -> float:
    """Seconds per private message (seed dialect) in, delivered to one user."""
    peer, peer_transport = open_protocol(factory, "/ws/bob")
    proto, transport = open_protocol(factory, "/ws/alice")
    frame = client_frame(json.dumps({"to_user": "bob", "msg": "hello, bob - 0123456789"}).encode())

    def loop() -> None:
        for i in range(n):
            proto.dataReceived(frame)
            if i & 1023 == 0:
                peer_transport.clear()

    elapsed = measure(loop)
    assert b"hello, bob" in peer_transport.value() or n <= 1
    for p, t in ((proto, transport), (peer, peer_transport)):
        t.clear()
        close_protocol(p, t)
    return elapsed / n


# -- the Redis backend's private path, against a real redis-server ----------------

#: Private messages per reactor turn in the ``redis-private`` op: on the
#: benchmark's private row a turn carries about 160 to one script call.
REDIS_TURN = 64


def improto_redis_factory() -> Any:
    """
    improto's chat factory on the router and Redis backend that
    ``twistd improto --backend redis://...`` builds (``tap.build_service``:
    history on, the defaults; ``--gc-threshold 0`` keeps the collector as
    the other ops have it), on a private redis-server started here (on a
    free port, stopped at exit). Redis runs natively: under callgrind only
    improto's own instructions are counted.
    """
    import atexit
    import tempfile

    from twisted.internet import reactor

    from improto import tap
    from improto.web.chat import ChatServerFactory

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import harness

    port = harness.free_port()
    workdir = Path(tempfile.mkdtemp(prefix="micro-redis-"))
    redis = harness.Server("micro-redis", harness.redis_argv(port, workdir), port, workdir / "redis.log", None)
    redis.start()
    atexit.register(redis.stop)
    options = tap.Options()
    options.parseOptions([*SERVER_ARGV, "--gc-threshold", "0", "--backend", f"redis://127.0.0.1:{port}/0"])
    service = tap.build_service(options, endpoint=object())
    # The backend connects once the reactor has started (callWhenRunning);
    # here the reactor is only iterated, never run.
    reactor.startRunning()  # type: ignore[attr-defined]
    spin_until(service.router.backend.start())
    return ChatServerFactory(service.router, service.settings, reactor)


def spin_until(done: Any, limit: float = 10.0) -> Any:
    """Run the reactor until ``done`` (a Deferred, or a callable) says so; its result."""
    from twisted.internet import reactor

    result: list[Any] = []
    if hasattr(done, "addBoth"):
        done.addBoth(result.append)
        finished: Callable[[], bool] = lambda: bool(result)  # noqa: E731
    else:
        finished = done
    deadline = time.monotonic() + limit
    while not finished():
        if time.monotonic() > deadline:
            raise SystemExit("the Redis backend did not answer in time")
        reactor.iterate(0.002)  # type: ignore[attr-defined]
    return result[0] if result else None


def stop_reactor() -> None:
    """Shut down the iterated reactor: its thread pool would keep the process alive."""
    from twisted.internet import reactor

    reactor.fireSystemEvent("shutdown")  # type: ignore[attr-defined]
    for _ in range(20):
        reactor.iterate(0.01)  # type: ignore[attr-defined]


def open_redis_protocol(factory: Any, path: str) -> tuple[Any, Transport]:
    """:func:`open_protocol`, waiting for the backend (the handshake waits for ``SUBSCRIBE``)."""
    proto = factory.buildProtocol(PEER)
    transport = Transport(peerAddress=PEER)
    proto.makeConnection(transport)
    proto.dataReceived(handshake_request(path))
    spin_until(lambda: transport.value().startswith(b"HTTP/1.1 101"))
    transport.clear()
    return proto, transport


def bench_improto_redis_private(factory: Any, n: int) -> float:
    """
    Seconds per private message (seed dialect) through the Redis backend:
    :data:`REDIS_TURN` senders each send one in the same turn, then the
    reactor runs until every recipient has its message (the script call,
    its reply, the pushes and the deliveries, as on the benchmark's row).
    """
    pairs = [(open_redis_protocol(factory, f"/ws/ra{i}"), open_redis_protocol(factory, f"/ws/rb{i}"))
             for i in range(REDIS_TURN)]
    frames = [client_frame(json.dumps({"to_user": f"rb{i}", "msg": "hello - 0123456789"}).encode())
              for i in range(REDIS_TURN)]
    receivers = [transport for _, (_, transport) in pairs]
    turns = max(1, n // REDIS_TURN)

    def loop() -> None:
        for _ in range(turns):
            for ((sender, _), _), frame in zip(pairs, frames, strict=True):
                sender.dataReceived(frame)
            spin_until(lambda: all(t.value() for t in receivers))
            for t in receivers:
                t.clear()

    elapsed = measure(loop)
    for (a, at), (b, bt) in pairs:
        for p, t in ((a, at), (b, bt)):
            t.clear()
            close_protocol(p, t)
    return elapsed / (turns * REDIS_TURN)


# -- the whole server: twisted.web site, routes, Autobahn, router ----------------

#: ``servers/improto_server.py``'s command line: what the handshake benchmark runs.
SERVER_ARGV = ["--rate", "0", "--max-connections-per-ip", "0", "--max-handshakes-per-ip", "0",
               "--max-connections-per-user", "0"]


def improto_site(argv: list[str] = SERVER_ARGV) -> Any:
    """
    The ``GuardedSite`` that ``twistd improto`` listens with, built by
    ``improto.tap`` from the benchmark server's options (its backend started):
    every layer a real connection goes through, from the HTTP channel on.
    """
    from improto import tap

    options = tap.Options()
    options.parseOptions(argv)
    service = tap.build_service(options, endpoint=object())
    service.router.backend.start()
    return service.site


def bench_site_handshake(site: Any, n: int, path_of: Callable[[int], str]) -> float:
    """
    Seconds per connection through the whole server, as a socket sees it:
    the site's HTTP channel, the upgrade request parsed by twisted.web and
    routed to the WebSocket resource, Autobahn's handshake and open, the
    client's close frame, connection lost (on whatever protocol then owns
    the transport, as a TCP transport would tell it). After each connection
    the reactor's timer bookkeeping runs once (``runUntilCurrent``, as every
    reactor iteration does; nothing is due), so that the timers a connection
    set and cancelled are dropped as in a running server instead of piling
    up in a reactor that never runs.
    """
    from twisted.internet import reactor
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    requests = [handshake_request(path_of(i)) for i in range(n)]
    done = Failure(ConnectionDone())
    last: list[Transport] = []

    def loop() -> None:
        for request in requests:
            channel = site.buildProtocol(PEER)
            transport = Transport(peerAddress=PEER)
            transport.protocol = channel
            channel.makeConnection(transport)
            channel.dataReceived(request)
            transport.protocol.dataReceived(CLOSE_FRAME)
            transport.lose(done)
            reactor.runUntilCurrent()  # type: ignore[attr-defined]
        last.append(transport)

    elapsed = measure(loop)
    transport = last[-1]
    assert transport.value().startswith(b"HTTP/1.1 101"), transport.value()[:300]
    return elapsed / n


# -- driver ----------------------------------------------------------------------


def best_of(repeats: int, fn: Callable[[], float]) -> float:
    results = []
    for _ in range(repeats):
        gc.collect()
        results.append(fn())
    return min(results)


def best_of_pair(repeats: int, a: Callable[[], float], b: Callable[[], float]) -> tuple[float, float]:
    """Best of ``repeats`` for each, interleaved so that drift hits both alike."""
    ra, rb = [], []
    for _ in range(repeats):
        gc.collect()
        ra.append(a())
        gc.collect()
        rb.append(b())
    return min(ra), min(rb)


def run(quick: bool = False) -> list[dict[str, Any]]:
    # Many short repeats rather than a few long ones: on a shared machine
    # the best of many is the one least disturbed by other work.
    n_frames = 5_000 if quick else 10_000
    n_conns = 300 if quick else 500
    repeats = 5 if quick else 9
    bare_factory = make_factory(StockProtocol)
    chat = improto_factory()
    rows: list[dict[str, Any]] = []

    def pair(group: str, name: str, unit: str, fn: Callable[[Any], float], f: Any) -> None:
        s, q = best_of_pair(repeats, stock_autobahn(lambda: fn(f)), lambda: fn(f))
        rows.append({"group": group, "op": name, "unit": unit, "stock_us": s * 1e6,
                     "quiet_us": q * 1e6})

    bare = "Autobahn WebSocketServerProtocol, no-op callbacks"
    pair(bare, "handshake + close", "conn",
         lambda f: bench_handshake(f, n_conns, lambda i: f"/ws/u{i}"), bare_factory)
    pair(bare, "frame in, 1 per read", "frame", lambda f: bench_frames_in(f, n_frames, 1),
         bare_factory)
    pair(bare, "frame in, 20 per read", "frame", lambda f: bench_frames_in(f, n_frames, 20),
         bare_factory)
    pair(bare, "prepared frame out (sendPreparedMessage)", "frame",
         lambda f: bench_send_prepared(f, n_frames), bare_factory)
    pair(bare, "sendMessage out (framed each time)", "frame",
         lambda f: bench_send_message(f, n_frames), bare_factory)
    full = "improto ChatServerProtocol + router + memory backend"
    pair(full, "handshake + close (joins lobby)", "conn",
         lambda f: bench_handshake(f, n_conns, lambda i: f"/ws/u{i}"), chat)
    pair(full, "private message in, 1 out", "msg",
         lambda f: bench_improto_private_in(f, n_frames), chat)
    members = 100
    pair(full, f"group message in, {members} out", "msg",
         lambda f: bench_improto_group_in(f, n_frames // 50, members), chat)

    # How the cost of a connection grows with the lobby (improto as shipped).
    scale = "improto handshake + close vs members already in the lobby"
    for lobby in (0, 1000) if quick else (0, 1000, 3000):
        f = improto_factory()
        idle = [open_protocol(f, f"/ws/idle{i}") for i in range(lobby)]
        t = best_of(repeats, functools.partial(bench_handshake, f, n_conns // 2, "/ws/u{}".format))
        rows.append({"group": scale, "op": f"{lobby} members", "unit": "conn", "stock_us": None,
                     "quiet_us": t * 1e6})
        for p, tr in idle:
            close_protocol(p, tr)
    return rows


def run_options(quick: bool = False) -> list[dict[str, Any]]:
    """
    The bare protocol under each way to make Autobahn's logging cheap without
    re-stating its methods; "stock" is whatever Autobahn is imported.
    """
    import txaio

    n_frames = 5_000 if quick else 10_000
    n_conns = 300 if quick else 500
    repeats = 5 if quick else 9
    plain, null = make_factory(StockProtocol), make_factory(NullLoggerProtocol)

    def at_level(level: str, fn: Callable[[], float]) -> Callable[[], float]:
        def run() -> float:
            txaio.set_global_log_level(level)
            try:
                return fn()
            finally:
                txaio.set_global_log_level("info")

        return run

    ops: list[tuple[str, Callable[[Any], float]]] = [
        ("handshake + close /conn", lambda f: bench_handshake(f, n_conns, "/ws/u{}".format)),
        ("frame in, 1 per read /frame", lambda f: bench_frames_in(f, n_frames, 1)),
        ("prepared frame out /frame", lambda f: bench_send_prepared(f, n_frames)),
    ]
    rows = []
    for op, fn in ops:
        variants = {
            "stock": stock_autobahn(functools.partial(fn, plain)),
            "txaio level critical": stock_autobahn(at_level("critical", functools.partial(fn, plain))),
            "null logger": stock_autobahn(functools.partial(fn, null)),
            "improto.web.quiet": functools.partial(fn, plain),
        }
        results: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(repeats):  # interleaved, so that drift hits all alike
            for name, variant in variants.items():
                gc.collect()
                results[name].append(variant())
        rows.append({"op": op, **{name: min(r) * 1e6 for name, r in results.items()}})
    return rows


# -- instruction counts (callgrind) -----------------------------------------------

#: op -> (which factory, how to run it n times, n under callgrind).
OPS: dict[str, tuple[str, Callable[[Any, int], float], int]] = {
    "handshake": ("bare", lambda f, n: bench_handshake(f, n, "/ws/u{}".format), 40),
    "frame-in": ("bare", lambda f, n: bench_frames_in(f, n, 1), 400),
    "frame-in-20": ("bare", lambda f, n: bench_frames_in(f, n, 20), 800),
    "prepared-out": ("bare", bench_send_prepared, 2000),
    "send-message": ("bare", bench_send_message, 1000),
    "improto-handshake": ("chat", lambda f, n: bench_handshake(f, n, "/ws/u{}".format), 40),
    "site-handshake": ("site", lambda f, n: bench_site_handshake(f, n, _generator_path), 100),
    "ceiling-handshake": ("ceiling", lambda f, n: bench_handshake(f, n, _generator_path), 100),
    "private": ("chat", bench_improto_private_in, 300),
    "group-100": ("chat", lambda f, n: bench_improto_group_in(f, n, 100), 8),
    "redis-private": ("redis", bench_improto_redis_private, 640),
}


def _generator_path(i: int) -> str:
    """
    The handshake row's paths as ``loadgen_c/wsload.c`` makes them: a name
    per connection slot (``hs0``...), so the same few names come back and
    improto's name check is remembered, as in the row. The warm-up
    (``run_one``) uses each name once.
    """
    return f"/ws/hs{i % 8}"


def ceiling_factory() -> Any:
    """
    The in-stack ceiling peer's factory (``servers/autobahn_ceiling.py``),
    on stock Autobahn as that server runs (improto's ``quiet`` undone: its
    frame unmasker would make the ceiling cheaper than it is). Importing it
    stubs Autobahn's debug-log helpers for the whole process, so only
    ``--one`` (a process of its own) makes it.
    """
    quiet.uninstall()
    sys.path.insert(0, str(Path(__file__).resolve().parent / "servers"))
    import autobahn_ceiling

    return autobahn_ceiling.ChatFactory()


def run_one(op: str, mode: str, n: int) -> None:
    """One op, n times, counted by callgrind (see :func:`count_instructions`)."""
    global COUNTING
    kind, fn, _ = OPS[op]
    factory = {
        "bare": lambda: make_factory(StockProtocol), "site": improto_site,
        "ceiling": ceiling_factory, "chat": improto_factory, "redis": improto_redis_factory,
    }[kind]()
    if mode == "stock":
        quiet.uninstall()
    fn(factory, max(2, n // 4))  # warm-up: first-use imports, remembered texts
    gc.collect()
    COUNTING = True
    fn(factory, n)
    if kind == "redis":
        stop_reactor()


def count_instructions(ops: list[str], modes: list[str]) -> list[dict[str, Any]]:
    """
    Instructions per operation, by callgrind: repeatable whatever the load
    on the machine, unlike the timings. Only the measured loop is counted
    (it runs inside ``functools.reduce``, callgrind's ``--toggle-collect``).
    """
    import os
    import re
    import subprocess
    import tempfile

    rows = []
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    for op in ops:
        n = OPS[op][2]
        row: dict[str, Any] = {"op": op, "n": n}
        for mode in modes:
            with tempfile.NamedTemporaryFile(suffix=".callgrind") as out:
                proc = subprocess.run(
                    ["valgrind", "--tool=callgrind", "--collect-atstart=no",
                     "--toggle-collect=functools_reduce", f"--callgrind-out-file={out.name}",
                     sys.executable, __file__, "--one", op, "--mode", mode, "--n", str(n)],
                    env=env, capture_output=True, text=True, check=False,
                )
            found = re.search(r"Collected : (\d+)", proc.stderr)
            if proc.returncode or not found:
                raise SystemExit(f"callgrind failed for {op} ({mode}):\n{proc.stderr[-2000:]}")
            row[mode] = int(found.group(1)) / n
        rows.append(row)
    return rows


def format_instructions(rows: list[dict[str, Any]]) -> str:
    modes = [k for k in rows[0] if k not in ("op", "n")]
    lines = ["instructions per operation (callgrind, measured loop only)",
             f"  {'':<20}{'n':>6}" + "".join(f"{m:>12}" for m in modes)]
    for r in rows:
        lines.append(f"  {r['op']:<20}{r['n']:>6}" + "".join(f"{r[m]:12.0f}" for m in modes))
    return "\n".join(lines)


def format_options(rows: list[dict[str, Any]]) -> str:
    names = [k for k in rows[0] if k != "op"]
    lines = ["µs per operation (best of repeats), bare WebSocketServerProtocol",
             f"  {'':<30}" + "".join(f"{n:>22}" for n in names)]
    for r in rows:
        lines.append(f"  {r['op']:<30}" + "".join(f"{r[n]:22.2f}" for n in names))
    return "\n".join(lines)


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'µs per operation (best of repeats)':<52} {'stock':>9} {'improto':>9} {'ratio':>7}"]
    group = None
    for r in rows:
        if r.get("group") != group:
            group = r.get("group")
            paired = r["stock_us"] is not None
            lines.append(f"{group}:" + ("  stock Autobahn vs with improto.web.quiet"
                                        if paired else ""))
        s, q = r["stock_us"], r["quiet_us"]
        if s is None:
            lines.append(f"  {r['op'] + ' /' + r['unit']:<50} {'':>9} {q:9.2f}")
        else:
            lines.append(f"  {r['op'] + ' /' + r['unit']:<50} {s:9.2f} {q:9.2f} {s / q:6.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    parser.add_argument("--no-boost", action="store_true", help="see run.py --no-boost")
    parser.add_argument("--options", action="store_true",
                        help="compare the ways to quiet Autobahn's logging (docs/upstream)")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions per operation with callgrind instead of timing")
    parser.add_argument("--ops", default=",".join(OPS), help="with --instructions: which ops")
    parser.add_argument("--modes", default="stock,improto", help="with --instructions")
    parser.add_argument("--one", choices=list(OPS), help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="improto", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=100, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args.one, args.mode, args.n)
        return
    if args.instructions:
        rows = count_instructions(args.ops.split(","), args.modes.split(","))
        print(json.dumps(rows) if args.json else format_instructions(rows))
        return
    import harness

    harness.boost(not args.no_boost)
    harness.pin_to_server_cpu()
    if args.options:
        rows = run_options(args.quick)
        print(json.dumps(rows) if args.json else format_options(rows))
        return
    rows = run(args.quick)
    if args.json:
        json.dump(rows, sys.stdout)
        print()
    else:
        print(format_rows(rows))


if __name__ == "__main__":
    main()
