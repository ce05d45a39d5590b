"""
Does a server's RSS keep rising while permessage-deflate connections churn?

    python benchmarks/deflate_rss.py [--connections 100] [--seconds 30] [--messages 3]
                                     [--deflate | --no-deflate] [--tracemalloc]
                                     [--client-window-bits N] [--redis]
    python benchmarks/deflate_rss.py --framing-only [--seconds 10]

Starts improto in a child process (the same ``tap.makeService`` as
``twistd -n improto --rate 0`` with every per-address and per-user limit
lifted, memory backend; ``--redis``: the Redis backend on a private
``redis-server`` started for the run), keeps ``--connections`` client connections open
from this process, and churns them: each one connects (offering
permessage-deflate unless ``--no-deflate``), sends ``--messages`` private
messages to itself and one to its group, waits for their acks, and closes; a new
one takes its place. The server prints its VmRSS every second. At the end
the server reports, in this order, VmRSS as it is, after ``gc.collect()``,
after ``malloc_trim(0)`` (glibc), and with ``--tracemalloc`` the Python
allocations still live (zlib's state is allocated through
``PyMem_RawMalloc``, so tracemalloc sees it) with the largest sites.

``--framing-only`` runs :func:`improto.web.framing.deflate` in a loop in
this process and prints the same numbers: one compressobj per call.

Reading it: RSS that levels off while connections churn is the live
connections' state (a plateau); RSS that keeps rising with cycles and does
not come back after ``gc.collect()`` and ``malloc_trim`` is a leak; RSS
that comes back after ``malloc_trim`` only is allocator fragmentation.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from typing import Any


def rss_mib(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def report() -> dict[str, Any]:
    """RSS as is, after a collection, after glibc returns free memory."""
    out: dict[str, Any] = {"rss": round(rss_mib(), 1)}
    gc.collect()
    out["rss_after_gc"] = round(rss_mib(), 1)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    out["rss_after_trim"] = round(rss_mib(), 1)
    if tracemalloc.is_tracing():
        snapshot = tracemalloc.take_snapshot()
        out["traced_mib"] = round(sum(s.size for s in snapshot.statistics("filename")) / 2**20, 1)
        out["top"] = [
            f"{s.size / 1024:.0f} KiB {s.count} {s.traceback[0].filename.rsplit('/', 1)[-1]}:"
            f"{s.traceback[0].lineno}"
            for s in snapshot.statistics("lineno")[:8]
        ]
    return out


# -- server (child process) ----------------------------------------------------


def serve(port: int, args: argparse.Namespace) -> None:
    if args.tracemalloc:
        tracemalloc.start(1)
    from twisted.internet import reactor, task

    from improto import tap
    from improto.web import framing

    if args.client_window_bits is not None:
        framing.CLIENT_WINDOW_BITS = args.client_window_bits
    options = tap.Options()
    options.parseOptions([
        "--port", f"tcp:{port}:interface=127.0.0.1", "--rate", "0", "--ping-interval", "0",
        "--max-connections-per-ip", "0", "--max-handshakes-per-ip", "0",
        "--max-connections-per-user", "0",
        *(["--backend", f"redis://127.0.0.1:{args.redis_port}/0"] if args.redis_port else []),
    ])
    tap.makeService(options).startService()
    start = time.monotonic()

    def sample() -> None:
        print(json.dumps({"t": round(time.monotonic() - start, 1), "rss": round(rss_mib(), 1)}),
              flush=True)

    def final(*_: Any) -> None:
        reactor.callFromThread(lambda: print(json.dumps({"final": report()}), flush=True))

    signal.signal(signal.SIGUSR1, final)
    task.LoopingCall(sample).start(1.0)
    reactor.run()


# -- clients (this process) ----------------------------------------------------


async def one(url: str, name: str, messages: int, deflate: bool) -> None:
    from websockets.asyncio.client import connect

    async with connect(url + name, subprotocols=["improto.v1"],  # type: ignore[list-item]
                       compression="deflate" if deflate else None, ping_interval=None,
                       max_queue=None, proxy=None) as ws:
        json.loads(await ws.recv())  # welcome
        expected = 0
        for i in range(messages):
            await ws.send(json.dumps({"type": "private", "to": name, "msg": "hello " * 20, "id": i}))
            expected += 1  # its ack (a private to oneself is not echoed back)
        if messages:
            await ws.send(json.dumps({"type": "send", "group": "lobby", "msg": "hi all " * 20,
                                      "id": "g"}))
            expected += 1
        got = 0
        while got < expected:
            frame = json.loads(await ws.recv())
            if frame.get("type") == "ack":
                got += 1


async def churn(url: str, args: argparse.Namespace) -> int:
    cycles = 0
    deadline = time.monotonic() + args.seconds

    async def slot(k: int) -> None:
        nonlocal cycles
        n = 0
        while time.monotonic() < deadline:
            await one(url, f"u{k}x{n}", args.messages, args.deflate)
            n += 1
            cycles += 1

    await asyncio.gather(*(slot(k) for k in range(args.connections)))
    return cycles


def run_server_test(args: argparse.Namespace) -> None:
    from improto.testing import free_port, wait_for_port

    port = free_port()
    redis = None
    extra: list[str] = []
    if args.redis:
        redis_port = free_port()
        redis = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(redis_port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        wait_for_port(redis_port, redis, timeout=30)
        extra = ["--redis-port", str(redis_port)]
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)] + sys.argv[1:] + extra,
        stdout=subprocess.PIPE, text=True,
    )
    try:
        wait_for_port(port, child, timeout=30)
        base = rss_mib(child.pid)
        cycles = asyncio.run(churn(f"ws://127.0.0.1:{port}/ws/", args))
        live = rss_mib(child.pid)
        time.sleep(2)  # the last closes
        child.send_signal(signal.SIGUSR1)
        assert child.stdout is not None
        samples = []
        for line in child.stdout:
            row = json.loads(line)
            if "final" in row:
                final = row["final"]
                break
            samples.append(row["rss"])
        step = max(1, len(samples) // 10)
        print(json.dumps({
            "deflate": args.deflate, "connections": args.connections, "messages": args.messages,
            "cycles": cycles, "rss_start": round(base, 1), "rss_end_of_load": round(live, 1),
            "rss_every_few_s": samples[::step], **final,
        }, indent=1))
    finally:
        child.terminate()
        child.wait()
        if redis is not None:
            redis.terminate()
            redis.wait()


def run_framing_only(args: argparse.Namespace) -> None:
    from improto.web.framing import deflate

    if args.tracemalloc:
        tracemalloc.start(1)
    payload = json.dumps({"type": "message", "group": "lobby", "msg": "hello " * 30}).encode()
    deadline = time.monotonic() + args.seconds
    calls = 0
    samples = []
    next_sample = time.monotonic()
    while time.monotonic() < deadline:
        deflate(payload, 15, 8)
        calls += 1
        if time.monotonic() >= next_sample:
            samples.append(round(rss_mib(), 1))
            next_sample += 1
    print(json.dumps({"calls": calls, "rss_every_s": samples, **report()}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--messages", type=int, default=3)
    parser.add_argument("--deflate", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--framing-only", action="store_true")
    parser.add_argument("--client-window-bits", type=int, default=None)
    parser.add_argument("--redis", action="store_true",
                        help="the Redis backend, on a private redis-server")
    parser.add_argument("--redis-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.serve:
        serve(args.serve, args)
    elif args.framing_only:
        run_framing_only(args)
    else:
        run_server_test(args)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
