"""
What batching the commands of one reactor turn into one write buys.

Starts a private redis-server (or uses --url), runs a publishing node and
a subscribed node in this process, and for each burst size (publishes
issued in one reactor turn before waiting for their replies) measures
published-and-acknowledged messages per second with one transport write
per command ("unbatched") and one per turn ("batched"). Burst 1 is the
request/response baseline: nothing to batch, one round trip per message.

    PYTHONPATH=. python benchmarks/bench_redis_batching.py [--messages 20000]

Every cell stops after --messages messages or --seconds seconds,
whichever comes first; the whole run is bounded by both.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid

from twisted.internet import defer, task

from improto.backend import Envelope
from improto.redis_resp import HIREDIS_AVAILABLE
from improto.redisbackend import RedisBackend


async def measure(reactor, url: str, batch_writes: bool, burst: int, messages: int, seconds: float, size: int) -> float:
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
    started = time.perf_counter()
    deadline = started + seconds
    while sent < messages and time.perf_counter() < deadline:
        n = min(burst, messages - sent)
        counts = await defer.gatherResults([publisher.publish("group:bench", env) for _ in range(n)])
        assert counts == [1] * n, counts
        sent += n
    elapsed = time.perf_counter() - started
    wait_until = time.perf_counter() + 10
    while received < sent and time.perf_counter() < wait_until:
        await task.deferLater(reactor, 0.01, lambda: None)
    assert received == sent, f"published {sent}, received {received}"
    await publisher.stop()
    await subscriber.stop()
    return sent / elapsed


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
            f"(<= {args.seconds:g}s), parser={'hiredis' if HIREDIS_AVAILABLE else 'python'}, "
            f"1 subscribed node in-process"
        )
        print(f"{'burst/turn':>10} {'unbatched msg/s':>16} {'batched msg/s':>14} {'ratio':>6}")
        baseline = None
        for burst in args.bursts:
            unbatched = await measure(reactor, url, False, burst, args.messages, args.seconds, args.size)
            batched = await measure(reactor, url, True, burst, args.messages, args.seconds, args.size)
            baseline = baseline or unbatched
            print(f"{burst:>10} {unbatched:>16,.0f} {batched:>14,.0f} {batched / unbatched:>6.2f}")
            sys.stdout.flush()
        print(
            f"batched burst {args.bursts[-1]} vs one round trip per message (burst {args.bursts[0]}, "
            f"unbatched): {batched / baseline:.1f}x"
        )
    finally:
        if server is not None:
            server.cleanup()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="use this Redis instead of a private redis-server")
    parser.add_argument("--messages", type=int, default=20000, help="messages per cell (default 20000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="time cap per cell (default 10)")
    parser.add_argument("--size", type=int, default=100, help="frame size in bytes (default 100)")
    parser.add_argument("--bursts", type=int, nargs="+", default=[1, 10, 100, 1000])
    return parser.parse_args(argv)


if __name__ == "__main__":
    options = parse_args(sys.argv[1:])
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, options)))
