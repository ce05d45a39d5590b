"""
What batching the commands of one reactor turn into one write buys.

Starts a private redis-server (or uses --url), runs a publishing node and
a subscribed node in this process, and for each burst size (publishes
issued in one reactor turn before waiting for their replies) measures
published-and-acknowledged messages per second with one transport write
per command ("unbatched") and one per turn ("batched"). Burst 1 is the
request/response baseline: nothing to batch, one round trip per message.

    pip install '.[redis]'   # hiredis; and redis-server on PATH
    PYTHONPATH=. python benchmarks/bench_redis_batching.py [--messages 10000]

Every cell stops after --messages messages or --seconds seconds,
whichever comes first, so a run takes at most
len(bursts) * 2 * rounds * seconds (defaults: 4 * 2 * 3 * 5 s = 2 min),
and typically well under a minute.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid

import hiredis
from twisted.internet import defer, task

from improto.backends.interface import Envelope
from improto.backends.redis import RedisBackend


async def measure(
    reactor, url: str, batch_writes: bool, burst: int, messages: int, seconds: float, size: int
) -> tuple[float, float]:
    """Publish until done; return (messages per wall second, CPU microseconds per message)."""
    prefix = f"improto-bench:{uuid.uuid4().hex[:8]}:"
    publisher = RedisBackend.from_url(url, reactor=reactor, prefix=prefix, batch_writes=batch_writes)
    subscriber = RedisBackend.from_url(url, reactor=reactor, prefix=prefix)
    await publisher.start()
    await subscriber.start()
    received = 0

    def count(_: Envelope) -> None:
        nonlocal received
        received += 1

    await subscriber.subscribe("group:bench", count)
    env = Envelope(publisher.node_id, "bench-session", b"x" * size)
    sent = 0
    cpu_started = time.process_time()
    started = time.perf_counter()
    deadline = started + seconds
    while sent < messages and time.perf_counter() < deadline:
        n = min(burst, messages - sent)
        counts = await defer.gatherResults([publisher.publish("group:bench", env) for _ in range(n)])
        assert counts == [1] * n, counts
        sent += n
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    wait_until = time.perf_counter() + 10
    while received < sent and time.perf_counter() < wait_until:
        await task.deferLater(reactor, 0.01, lambda: None)
    assert received == sent, f"published {sent}, received {received}"
    await publisher.stop()
    await subscriber.stop()
    return sent / elapsed, cpu / sent * 1e6


async def main(reactor, args: argparse.Namespace) -> None:
    server = None
    url = args.url
    if url is None:
        from tests.redis_fixture import RedisServer

        server = RedisServer()
        server.start()
        url = server.url
    try:
        print(
            f"improto Redis publish throughput: {args.messages} msgs of {args.size} B per cell "
            f"(<= {args.seconds:g}s), hiredis {hiredis.__version__}, "
            f"1 subscribed node in-process"
        )
        print(
            f"median of {args.rounds} interleaved rounds; CPU = this process (both nodes), "
            "which the machine's other load disturbs far less than wall time\n"
        )
        header = f"{'burst/turn':>10} | {'unbatched msg/s':>15} {'CPU us/msg':>10} | {'batched msg/s':>13} {'CPU us/msg':>10} | {'ratio msg/s':>11} {'ratio CPU':>9}"
        print(header)
        print("-" * len(header))
        table = {}
        for burst in args.bursts:
            cells: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            for _ in range(args.rounds):
                for batch_writes in (False, True):
                    cells[batch_writes].append(
                        await measure(reactor, url, batch_writes, burst, args.messages, args.seconds, args.size)
                    )
            (u_rate, u_cpu), (b_rate, b_cpu) = (
                (statistics.median(r for r, _ in cells[k]), statistics.median(c for _, c in cells[k]))
                for k in (False, True)
            )
            table[burst] = (u_rate, b_rate)
            print(
                f"{burst:>10} | {u_rate:>15,.0f} {u_cpu:>10.1f} | {b_rate:>13,.0f} {b_cpu:>10.1f} | "
                f"{b_rate / u_rate:>11.2f} {u_cpu / b_cpu:>9.2f}"
            )
            sys.stdout.flush()
        first, last = args.bursts[0], args.bursts[-1]
        print(
            f"\npipelining: batched burst {last} vs burst {first} (one round trip per message): "
            f"{table[last][1] / table[first][1]:.1f}x msg/s"
        )
    finally:
        if server is not None:
            server.cleanup()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="use this Redis instead of a private redis-server")
    parser.add_argument("--messages", type=int, default=10000, help="messages per cell (default 10000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="time cap per cell (default 5)")
    parser.add_argument("--size", type=int, default=100, help="frame size in bytes (default 100)")
    parser.add_argument("--bursts", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per cell, median kept (default 3)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    options = parse_args(sys.argv[1:])
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, options)))
