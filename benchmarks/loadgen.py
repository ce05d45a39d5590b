"""
The load generator: a minimal asyncio WebSocket client and the scenarios.

The client is written for low cost per frame rather than generality: it
frames and masks with integer XOR, parses server frames from one buffer per
read without copying the payload out unless a callback wants it, and keeps
no per-message objects. Only text/binary, close and ping frames are handled
(servers here never fragment a chat message).

Each scenario connects to ``127.0.0.1`` only, is bounded in messages and in
seconds, and returns a dict of results. ``server_pid`` lets a scenario read
the server's CPU time and RSS from ``/proc``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

HOST = "127.0.0.1"
#: Linux's SO_TIMESTAMPNS (and SCM_TIMESTAMPNS), which Python does not name.
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def server_cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of a process, from /proc (None where unavailable)."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def server_rss_bytes(pid: int | None) -> int | None:
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


class CpuMeter:
    """Server and load-generator CPU use over one measured interval."""

    def __init__(self, server_pid: int | None) -> None:
        self.pid = server_pid
        self.wall0 = time.perf_counter()
        self.srv0 = server_cpu_seconds(server_pid)
        self.cli0 = time.process_time()

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.wall0
        srv1 = server_cpu_seconds(self.pid)
        cli = time.process_time() - self.cli0
        srv = None if srv1 is None or self.srv0 is None else srv1 - self.srv0
        return {
            "wall_s": wall,
            "server_cpu": None if srv is None or wall <= 0 else srv / wall,
            "client_cpu": cli / wall if wall > 0 else None,
        }


# -- the client -------------------------------------------------------------------


def mask_frame(payload: bytes, opcode: int = 1) -> bytes:
    """One masked client frame (RFC 6455 5.2), random mask, XOR as integers."""
    n = len(payload)
    key = random.getrandbits(32).to_bytes(4, "big")
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 0x10000:
        header = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    if n:
        stream = (key * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(
            n, "big"
        )
    return header + key + payload


CLOSE_1000 = (1000).to_bytes(2, "big")


class Totals:
    """Counters shared by every connection of one scenario."""

    __slots__ = ("frames", "last", "all")

    def __init__(self) -> None:
        self.frames = 0
        self.last = 0.0
        #: Never reset: every data frame of the scenario, warm-up included.
        self.all = 0


class WSConn(asyncio.Protocol):
    """One client connection."""

    def __init__(self, path: str, totals: Totals, port: int) -> None:
        loop = asyncio.get_running_loop()
        self.path = path
        self.port = port
        self.totals = totals
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.is_open = False
        self.count = 0
        self.close_sent = False
        #: Called as ``on_message(conn, payload, now)`` for each data frame.
        self.on_message: Callable[[WSConn, bytes, float], None] | None = None
        self.status = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(  # type: ignore[attr-defined]
            (
                f"GET {self.path} HTTP/1.1\r\n"
                f"Host: {HOST}:{self.port}\r\n"
                "Upgrade: websocket\r\n"
                "Connection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(
                ConnectionError(f"closed before the handshake ended: {self.status[:80]!r}")
            )
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        if not self.is_open:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status = self.buf[: self.buf.find(b"\r\n")]
            data = self.buf[end + 4 :]
            self.buf = b""
            if not self.status.startswith(b"HTTP/1.1 101"):
                self.transport.abort()  # type: ignore[union-attr]
                return
            self.is_open = True
            self.opened.set_result(None)
            if not data:
                return
        self.feed(data, time.perf_counter())

    def feed(self, data: bytes, now: float) -> None:
        """Parse server frames from ``data``, which arrived at ``now``."""
        buf = self.buf + data if self.buf else data
        n = len(buf)
        i = 0
        frames = 0
        callback = self.on_message
        while n - i >= 2:
            length = buf[i + 1] & 0x7F
            if length < 126:
                start = i + 2
            elif length == 126:
                if n - i < 4:
                    break
                length = int.from_bytes(buf[i + 2 : i + 4], "big")
                start = i + 4
            else:
                if n - i < 10:
                    break
                length = int.from_bytes(buf[i + 2 : i + 10], "big")
                start = i + 10
            end = start + length
            if end > n:
                break
            opcode = buf[i] & 0x0F
            if opcode == 1 or opcode == 2:
                frames += 1
                if callback is not None:
                    callback(self, buf[start:end], now)
            elif opcode == 8:
                if not self.close_sent:
                    self.close_sent = True
                    self.transport.write(mask_frame(buf[start : start + 2], 8))  # type: ignore[union-attr]
            elif opcode == 9:
                self.transport.write(mask_frame(buf[start:end], 10))  # type: ignore[union-attr]
            i = end
        self.buf = buf[i:] if i < n else b""
        if frames:
            self.count += frames
            totals = self.totals
            totals.frames += frames
            totals.all += frames
            totals.last = now

    def use_kernel_timestamps(self) -> bool:
        """
        From now on read this connection with ``recvmsg`` and stamp frames
        with the time the kernel received them (SO_TIMESTAMPNS), so that a
        latency excludes the time this one-process load generator took to
        get round to reading this socket among hundreds. Linux only;
        returns False (and changes nothing) where unavailable.
        """
        sock = self.transport.get_extra_info("socket") if self.transport else None  # type: ignore[union-attr]
        if sock is None or not hasattr(socket, "CMSG_SPACE"):
            return False
        try:
            own = socket.socket(fileno=os.dup(sock.fileno()))
            own.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        except OSError:
            return False
        own.setblocking(False)
        loop = asyncio.get_running_loop()
        self.transport.pause_reading()  # type: ignore[union-attr]
        # CLOCK_REALTIME (kernel stamps) to the perf_counter the sender uses.
        offset = time.time() - time.perf_counter()
        ancillary = socket.CMSG_SPACE(16)

        def readable() -> None:
            try:
                data, anc, _, _ = own.recvmsg(1 << 16, ancillary)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, anc = b"", []
            if not data:
                loop.remove_reader(own.fileno())
                own.close()
                return
            now = time.perf_counter()
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(cdata) >= 16:
                    sec, nsec = struct.unpack("qq", cdata[:16])
                    now = sec + nsec * 1e-9 - offset
            self.feed(data, now)

        loop.add_reader(own.fileno(), readable)
        self._kernel_socket = own
        return True

    def abort(self) -> None:
        own = getattr(self, "_kernel_socket", None)
        if own is not None and own.fileno() >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(own.fileno())
            own.close()
        if self.transport is not None:
            self.transport.abort()

    def send_text(self, payload: bytes) -> None:
        self.transport.write(mask_frame(payload))  # type: ignore[union-attr]

    def send_close(self) -> None:
        if not self.close_sent:
            self.close_sent = True
            self.transport.write(mask_frame(CLOSE_1000, 8))  # type: ignore[union-attr]


async def connect(port: int, path: str, totals: Totals, timeout: float = 10.0) -> WSConn:
    loop = asyncio.get_running_loop()
    _, conn = await asyncio.wait_for(
        loop.create_connection(lambda: WSConn(path, totals, port), HOST, port), timeout
    )
    await asyncio.wait_for(conn.opened, timeout)
    return conn


async def connect_many(
    port: int, paths: list[str], totals: Totals, concurrency: int = 50
) -> list[WSConn]:
    sem = asyncio.Semaphore(concurrency)

    async def one(path: str) -> WSConn:
        async with sem:
            return await connect(port, path, totals)

    return list(await asyncio.gather(*(one(p) for p in paths)))


def close_all(conns: list[WSConn]) -> None:
    for c in conns:
        c.abort()


async def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.005) -> bool:
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(step)
    return True


async def measured(server_pid: int | None, seconds: float, state: dict[str, Any]) -> dict[str, Any]:
    """
    Let a running load reach steady state, then measure CPU use over
    ``seconds`` with ``state["measuring"]`` set (what the load counts then).
    """
    await asyncio.sleep(min(0.5, seconds / 4))
    meter = CpuMeter(server_pid)
    state["measuring"] = True
    await asyncio.sleep(seconds)
    state["measuring"] = False
    return meter.stop()


def seq_of(payload: bytes) -> int:
    """The sequence number a scenario put between '#' marks in a message."""
    start = payload.find(b"#")
    end = payload.find(b"#", start + 1)
    if start < 0 or end < 0:
        return -1
    try:
        return int(payload[start + 1 : end])
    except ValueError:
        return -1


def _per_op(cpu: dict[str, Any], ops: int) -> float | None:
    """Server CPU µs per operation over the measured interval."""
    if cpu["server_cpu"] is None or not ops:
        return None
    return cpu["server_cpu"] * cpu["wall_s"] / ops * 1e6  # type: ignore[operator]


def percentiles(samples: list[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50_ms": None, "p99_ms": None}
    s = sorted(samples)

    def pick(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))] * 1000.0

    return {"p50_ms": pick(0.50), "p99_ms": pick(0.99)}


def group_message(seq: int, pad: str) -> bytes:
    # The seed 003 page's dialect; the sequence number rides in the text.
    return f'{{"username": "sender", "msg": "#{seq}# {pad}"}}'.encode()


# -- scenarios -------------------------------------------------------------------------


async def fanout(
    port: int,
    path: Callable[[str], str],
    server_pid: int | None = None,
    receivers: int = 200,
    probes: int = 20,
    rate: float = 50.0,
    latency_seconds: float = 2.0,
    blast: int = 2000,
    blast_timeout: float = 15.0,
) -> dict[str, Any]:
    """
    ``receivers`` connections in the lobby and one sender.

    Latency: the sender paces ``rate`` messages/s for ``latency_seconds``;
    ``probes`` receivers spread over the connection order timestamp each
    arrival with the kernel's receive time (SO_TIMESTAMPNS), so the
    one-way time is the server's fan-out and the network, not this process
    working through 200 sockets one after the other.
    Throughput: the sender writes ``blast`` messages at once; deliveries
    per second are counted at all receivers until every copy arrived (or
    ``blast_timeout``).
    """
    totals = Totals()
    pad = "hello everyone, this is a chat message"
    rx = await connect_many(port, [path(f"r{i}") for i in range(receivers)], totals)
    sender = await connect(port, path("sender"), totals)
    try:
        await asyncio.sleep(0.3)
        # Warm-up: everyone must be registered before measuring.
        sender.send_text(group_message(0, pad))
        ok = await wait_until(lambda: all(c.count >= 1 for c in rx), 10.0)
        if not ok:
            got = sum(1 for c in rx if c.count >= 1)
            return {"error": f"warm-up reached {got}/{receivers} receivers"}
        await asyncio.sleep(0.2)
        for c in rx:
            c.count = 0
        totals.frames = 0

        # Latency at a paced rate.
        sent_at: dict[int, float] = {}
        latencies: list[float] = []

        def probe(conn: WSConn, payload: bytes, now: float) -> None:
            t = sent_at.get(seq_of(payload))
            if t is not None:
                latencies.append(now - t)

        step = max(1, receivers // probes)
        kernel_stamps = True
        for c in rx[::step][:probes]:
            c.on_message = probe
            kernel_stamps = c.use_kernel_timestamps() and kernel_stamps
        n_paced = max(1, int(rate * latency_seconds))
        loop = asyncio.get_running_loop()
        t_next = loop.time()
        for seq in range(1, n_paced + 1):
            t_next += 1.0 / rate
            delay = t_next - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at[seq] = time.perf_counter()
            sender.send_text(group_message(seq, pad))
        await wait_until(lambda: totals.frames >= n_paced * receivers, 10.0)
        paced_delivered = totals.frames
        for c in rx:
            c.on_message = None
            c.count = 0
        totals.frames = 0
        await asyncio.sleep(0.2)

        # Throughput: everything at once.
        data = b"".join(
            mask_frame(group_message(seq, pad)) for seq in range(n_paced + 1, n_paced + 1 + blast)
        )
        meter = CpuMeter(server_pid)
        t0 = time.perf_counter()
        sender.transport.write(data)  # type: ignore[union-attr]
        expected = blast * receivers
        complete = await wait_until(lambda: totals.frames >= expected, blast_timeout, 0.002)
        cpu = meter.stop()
        elapsed = (totals.last - t0) if totals.frames else 0.0
        result: dict[str, Any] = {
            "throughput": totals.frames / elapsed if elapsed > 0 else 0.0,
            "unit": "msg/s",
            "delivered": totals.frames,
            "expected": expected,
            "complete": complete,
            "paced_rate": rate,
            "paced_delivered": paced_delivered,
            "paced_expected": n_paced * receivers,
            "kernel_timestamps": kernel_stamps,
            "ops": totals.all,
            "server_us_per_op": _per_op(cpu, totals.frames),
            **percentiles(latencies),
            **cpu,
        }
        return result
    finally:
        close_all(rx + [sender])
        await asyncio.sleep(0.1)


async def private(
    port: int,
    path: Callable[[str], str],
    server_pid: int | None = None,
    pairs: int = 50,
    window: int = 8,
    duration: float = 3.0,
    latency_pairs: int = 5,
    latency_seconds: float = 1.5,
) -> dict[str, Any]:
    """
    ``pairs`` pairs of users; each side answers every private message it
    gets with a new one to its partner.

    Latency: ``latency_pairs`` pairs with one message in flight each (a
    light load), one-way time. Throughput: every pair with ``window``
    messages in flight, deliveries per second.
    """
    totals = Totals()
    names = [(f"pa{i}", f"pb{i}") for i in range(pairs)]
    paths = [path(n) for pair in names for n in pair]
    conns = await connect_many(port, paths, totals)
    partner: dict[WSConn, WSConn] = {}
    partner_name: dict[WSConn, str] = {}
    for i in range(pairs):
        a, b = conns[2 * i], conns[2 * i + 1]
        partner[a], partner[b] = b, a
        partner_name[a], partner_name[b] = names[i][1], names[i][0]
    sent_at: dict[WSConn, dict[int, float]] = {c: {} for c in conns}
    seqs = {c: 0 for c in conns}
    latencies: list[float] = []
    state = {"running": False, "measuring": False, "deliveries": 0}

    def send(conn: WSConn) -> None:
        seqs[conn] += 1
        seq = seqs[conn]
        sent_at[conn][seq] = time.perf_counter()
        conn.send_text(
            f'{{"to_user": "{partner_name[conn]}", "msg": "#{seq}# are you there?"}}'.encode()
        )

    def on_message(conn: WSConn, payload: bytes, now: float) -> None:
        t = sent_at[partner[conn]].pop(seq_of(payload), None)
        if t is None:
            return
        if state["measuring"]:
            latencies.append(now - t)
            state["deliveries"] += 1
        if state["running"]:
            send(conn)

    async def phase(active: int, in_flight: int, seconds: float) -> dict[str, Any]:
        state["deliveries"] = 0
        state["running"] = True
        for i in range(active):
            for _ in range(in_flight):
                send(conns[2 * i])
        cpu = await measured(server_pid, seconds, state)
        state["running"] = False
        await wait_until(lambda: all(not d for d in sent_at.values()), 5.0)
        return cpu

    try:
        await asyncio.sleep(0.3)
        # Warm-up: one message each way for every pair.
        for c in conns:
            c.on_message = on_message
            send(c)
        ok = await wait_until(lambda: all(c.count >= 1 for c in conns), 10.0)
        if not ok:
            got = sum(1 for c in conns if c.count >= 1)
            return {"error": f"warm-up reached {got}/{len(conns)} users"}
        await wait_until(lambda: all(not d for d in sent_at.values()), 5.0)
        await phase(min(latency_pairs, pairs), 1, latency_seconds)
        light = percentiles(latencies)
        latencies.clear()
        cpu = await phase(pairs, window, duration)
        return {
            "throughput": state["deliveries"] / cpu["wall_s"],
            "unit": "msg/s",
            "in_flight": pairs * window,
            "ops": totals.all,
            "server_us_per_op": _per_op(cpu, state["deliveries"]),
            **light,
            "loaded": percentiles(latencies),
            **cpu,
        }
    finally:
        close_all(conns)
        await asyncio.sleep(0.1)


async def churn(
    port: int,
    path: Callable[[str], str],
    server_pid: int | None = None,
    concurrency: int = 50,
    duration: float = 3.0,
    latency_seconds: float = 1.5,
) -> dict[str, Any]:
    """
    Workers in a loop: connect, opening handshake, close handshake (client
    sends close, waits for the server to drop TCP). Latency: one worker
    (p50/p99 of a whole cycle). Throughput: ``concurrency`` workers,
    completed connections per second.
    """
    totals = Totals()
    cycles: list[float] = []
    errors: list[str] = []
    state = {"measuring": False, "stop": False, "done": 0, "all": 0}

    async def worker(w: int) -> None:
        name = path(f"churn{w}")  # a user who reconnects, as a page reload does
        while not state["stop"]:
            t0 = time.perf_counter()
            try:
                conn = await connect(port, name, totals, timeout=5.0)
                conn.send_close()
                await asyncio.wait_for(conn.closed, 5.0)
            except (OSError, asyncio.TimeoutError) as e:
                errors.append(repr(e)[:120])
                if len(errors) > 50:
                    return
                await asyncio.sleep(0.01)
                continue
            state["all"] += 1
            if state["measuring"]:
                cycles.append(time.perf_counter() - t0)
                state["done"] += 1

    async def phase(workers: int, seconds: float) -> dict[str, Any]:
        state["stop"] = False
        state["done"] = 0
        tasks = [asyncio.ensure_future(worker(w)) for w in range(workers)]
        cpu = await measured(server_pid, seconds, state)
        state["stop"] = True
        await asyncio.wait(tasks, timeout=10.0)
        for t in tasks:
            t.cancel()
        return cpu

    await phase(1, latency_seconds)
    light = percentiles(cycles)
    cycles.clear()
    cpu = await phase(concurrency, duration)
    result: dict[str, Any] = {
        "throughput": state["done"] / cpu["wall_s"],
        "unit": "conn/s",
        "ops": state["all"],
        "server_us_per_op": _per_op(cpu, state["done"]),
        **light,
        "loaded": percentiles(cycles),
        **cpu,
    }
    if errors:
        result["errors"] = len(errors)
        result["first_error"] = errors[0]
    return result


async def idle_memory(
    port: int,
    path: Callable[[str], str],
    server_pid: int | None = None,
    connections: int = 2000,
) -> dict[str, Any]:
    """RSS growth of the server per idle open connection."""
    totals = Totals()
    warm = await connect_many(port, [path(f"warm{i}") for i in range(10)], totals)
    await asyncio.sleep(0.5)
    before = server_rss_bytes(server_pid)
    t0 = time.perf_counter()
    conns = await connect_many(port, [path(f"idle{i}") for i in range(connections)], totals)
    opened_s = time.perf_counter() - t0
    await asyncio.sleep(1.0)
    after = server_rss_bytes(server_pid)
    close_all(conns + warm)
    await asyncio.sleep(0.2)
    if before is None or after is None:
        return {"error": "no /proc to read the server's RSS from"}
    return {
        "throughput": (after - before) / connections / 1024.0,
        "unit": "KiB/conn",
        "connections": connections,
        "rss_before_mib": before / 2**20,
        "rss_after_mib": after / 2**20,
        "open_rate": connections / opened_s,
        "p50_ms": None,
        "p99_ms": None,
    }
