"""
The load generator: one worker process drives a slice of the soak's slots.

A slot is one simulated client that lives for the whole soak, connecting
again and again (with the same nickname or a fresh one). Three kinds:

* observers (the first ``observers`` slots) join a few groups before the
  load starts and never move: they must receive exactly the acked
  messages of their groups and to them, which the harness checks;
* seed-dialect clients stay in ``lobby`` and send seed frames (no acks);
* native clients leave ``lobby`` (a few stay), join and leave shared and
  one-off groups, send to groups, send privately, ask ``who`` and
  reconnect, at random, each at its own pace.

Nothing here asserts; every oddity is counted in :class:`Stats` and the
harness asserts on the totals.
"""

from __future__ import annotations

import asyncio
import random
import resource
import time
import traceback
from typing import Any
from urllib.parse import quote

import attrs

from tests.soak.clients import Conn, Stats

TEXTS = ["hi", "大家好", "build is green", "lunch?", "x" * 200, "ok " * 40, "🙂 see you"]


@attrs.frozen
class LoadConfig:
    urls: tuple[str, ...]  # ws://host:port of each node
    connections: int
    seconds: float
    workers: int = 2
    #: Mean seconds between two actions of one client.
    think: float = 5.0
    #: Mean seconds a connection lives before it reconnects.
    lifetime: float = 90.0
    groups: int = 200
    #: Every n-th slot offers permessage-deflate, as browsers do (0: none).
    deflate_every: int = 3
    observers: int = 40
    seed_clients: int = 40
    #: Native clients that stay in lobby: every connect and disconnect
    #: anywhere is announced to each of them, so they multiply the load.
    lobby_stayers: int = 10
    seed: int = 1

    def node_of(self, slot: int) -> str:
        return self.urls[(slot // self.workers) % len(self.urls)]

    def observer_groups(self, slot: int) -> list[str]:
        rng = random.Random(self.seed * 7919 + slot)
        return [f"g{i}" for i in rng.sample(range(self.groups), min(3, self.groups))]

    def observer_names(self) -> list[str]:
        return [f"obs{slot}" for slot in range(self.observers)]


class Client:
    """One slot: a sequence of connections, one at a time."""

    def __init__(self, worker: Worker, slot: int) -> None:
        self.worker = worker
        self.cfg = worker.cfg
        self.slot = slot
        self.rng = random.Random(self.cfg.seed * 104729 + slot)
        self.generation = 0
        self.conn: Conn | None = None
        cfg = self.cfg
        self.observer = slot < cfg.observers
        self.seed = not self.observer and slot < cfg.observers + cfg.seed_clients
        first_native = cfg.observers + cfg.seed_clients
        self.lobby_stayer = not self.observer and not self.seed and slot < first_native + cfg.lobby_stayers
        # Slots s and s + workers (same worker, other node) are one user
        # with two devices, for a tenth of the native slots.
        pairs = (cfg.connections - first_native) // 10
        pair_slot = slot - first_native
        self.device_name = (
            f"d{pair_slot // (2 * cfg.workers)}x{pair_slot % cfg.workers}"
            if 0 <= pair_slot < pairs * 2 else None
        )

    def name(self) -> str:
        if self.observer:
            return f"obs{self.slot}"
        prefix = "s" if self.seed else "u"
        if self.generation and self.rng.random() < 0.5:
            # A fresh nickname: anything kept for old names would grow.
            return f"{prefix}{self.slot}r{self.generation}"
        return self.device_name or f"{prefix}{self.slot}"

    async def connect(self) -> Conn:
        stats = self.worker.stats
        conn = Conn(f"{self.worker.index}.{self.slot}.{self.generation}", self.name(),
                    native=not self.seed, stats=stats)
        url = f"{self.cfg.node_of(self.slot)}/ws/{quote(conn.name, safe='')}"
        async with self.worker.opening:
            try:
                every = self.cfg.deflate_every
                await conn.open(url, compression=bool(every) and self.slot % every == 0)
            except Exception as e:  # refused, reset, timed out: all are failures
                stats.violation("connect_failed", f"{conn.name}: {e!r}")
                await asyncio.sleep(1)
                raise
        stats.counts["connects"] += 1
        self.conn = conn
        if self.observer:
            conn.observed = set()
            conn.request("leave", "lobby", must="ack")
            for group in self.cfg.observer_groups(self.slot):
                conn.request("join", group, must="ack")
        elif not self.seed:
            if not self.lobby_stayer:
                conn.request("leave", "lobby", must="ack")
            for _ in range(self.rng.randint(1, 3)):
                self.join(conn)
        await conn.quiesce(60)
        return conn

    async def disconnect(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            await conn.quiesce(60)
            await conn.close()

    def join(self, conn: Conn) -> None:
        if self.rng.random() < 0.3:
            self.worker.one_offs += 1
            group = f"t{self.worker.index}.{self.worker.one_offs}"  # never used again
        else:
            group = f"g{self.rng.randrange(self.cfg.groups)}"
        if group not in conn.groups and group not in conn.joining:
            conn.request("join", group, must="ack")

    async def run(self, deadline: float) -> None:
        """Act until ``deadline`` (loop time), then wait for the last answers."""
        loop = asyncio.get_running_loop()
        if self.observer:
            return
        while loop.time() < deadline:
            if self.conn is None or self.conn.closed:
                try:
                    await self.connect()
                except Exception:
                    continue
            assert self.conn is not None
            end_of_life = min(deadline, loop.time() + self.rng.expovariate(1 / self.cfg.lifetime))
            while not self.conn.closed:
                pause = self.rng.expovariate(1 / self.cfg.think)
                if loop.time() + pause >= end_of_life:
                    await asyncio.sleep(max(0.0, end_of_life - loop.time()))
                    break
                await asyncio.sleep(pause)
                self.act(self.conn)
            if loop.time() < deadline:
                await self.disconnect()
                self.generation += 1
                self.worker.stats.counts["reconnects"] += 1
        if self.conn is not None:
            await self.conn.quiesce(60)

    def act(self, conn: Conn) -> None:
        rng = self.rng
        text = rng.choice(TEXTS)
        if self.seed:
            if rng.random() < 0.7:
                conn.seed_send(None, text)
            else:
                conn.seed_send(self.worker.someone(rng), text)
            return
        roll = rng.random()
        joined = sorted(conn.groups)
        if roll < 0.5 and joined:
            conn.request("send", rng.choice(joined), text=text)
        elif roll < 0.7:
            pick = rng.random()
            if pick < 0.3:
                conn.request("private", rng.choice(self.worker.observers), must="ack", text=text)
            elif pick < 0.9:
                conn.request("private", self.worker.someone(rng), text=text)
            else:
                self.worker.nobodies += 1
                who = f"nobody{self.worker.index}.{self.worker.nobodies}"
                conn.request("private", who, must="unknown_user", text=text)
        elif roll < 0.8 or not joined:
            if len(conn.groups) < 6:
                self.join(conn)
            else:
                conn.request("leave", rng.choice(joined), must="ack")
        elif roll < 0.92:
            conn.request("leave", rng.choice(joined), must="ack")
        else:
            conn.request("who", rng.choice(joined) if joined else "lobby", must="who")


class Worker:
    """The slots of one process, and the barriers the harness drives."""

    def __init__(self, cfg: LoadConfig, index: int) -> None:
        self.cfg = cfg
        self.index = index
        self.stats = Stats()
        self.clients = [Client(self, s) for s in range(cfg.connections) if s % cfg.workers == index]
        self.observers = cfg.observer_names()
        self.others = [c for c in self.clients if not c.observer]
        # Handshakes in flight: more only overflows the server's listen backlog.
        self.opening = asyncio.Semaphore(32)
        self.one_offs = 0
        self.nobodies = 0
        self.lags: list[float] = []

    def someone(self, rng: random.Random) -> str:
        """
        A user who is probably online (the race with reconnects is allowed);
        never an observer, who must get only acked messages.
        """
        client = rng.choice(self.others)
        return client.conn.name if client.conn is not None else f"u{client.slot}"

    async def measure_lag(self, stop: asyncio.Event) -> None:
        """How late the event loop runs a timer: is this process the bottleneck?"""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            before = loop.time()
            await asyncio.sleep(0.1)
            self.lags.append(loop.time() - before - 0.1)

    async def main(self, send: Any, wait: Any) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(self.connect_first(c) for c in self.clients))
        send(("ready", self.index, self.stats.counts["connects"]))
        await loop.run_in_executor(None, wait, "go")
        stop = asyncio.Event()
        lag = loop.create_task(self.measure_lag(stop))
        cpu_before = time.process_time()
        deadline = loop.time() + self.cfg.seconds
        await asyncio.gather(*(c.run(deadline) for c in self.clients))
        cpu = time.process_time() - cpu_before
        stop.set()
        await lag
        send(("quiet", self.index, cpu))
        await loop.run_in_executor(None, wait, "flush")
        await self.await_flush(deadline=loop.time() + 120)
        observed = self.observed()  # before the connections go
        await asyncio.gather(*(c.disconnect() for c in self.clients))
        send(("result", self.index, {**self.report(cpu), "observed": observed}))

    async def connect_first(self, client: Client) -> None:
        for _ in range(3):
            try:
                await client.connect()
                return
            except Exception:
                continue

    async def await_flush(self, deadline: float) -> None:
        """Observers have everything once they hold the harness's markers."""
        loop = asyncio.get_running_loop()
        wanted = {
            c: {f"flush.{g}" for g in self.cfg.observer_groups(c.slot)} | {f"flush.{c.conn.name}"}
            for c in self.clients if c.observer and c.conn is not None
        }
        while loop.time() < deadline:
            if all(want <= c.conn.flushes for c, want in wanted.items() if c.conn):
                return
            await asyncio.sleep(0.1)
        for c, want in wanted.items():
            if c.conn is not None and not want <= c.conn.flushes:
                self.stats.violation("flush_missing", f"{c.conn.name}: {sorted(want - c.conn.flushes)}")

    def observed(self) -> dict[str, Any]:
        """Each observer's key, groups and every message id it received."""
        return {
            c.conn.name: (c.conn.key, sorted(c.cfg.observer_groups(c.slot)), c.conn.observed)
            for c in self.clients if c.observer and c.conn is not None
        }

    def report(self, cpu: float) -> dict[str, Any]:
        lags = sorted(self.lags) or [0.0]
        return {
            "stats": self.stats,
            "cpu": cpu,
            "lag_p99": lags[min(len(lags) - 1, int(len(lags) * 0.99))],
            "lag_max": lags[-1],
            "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        }


def run_worker(cfg: LoadConfig, index: int, outbox: Any, events: dict[str, Any]) -> None:
    """A process's entry point (``multiprocessing``, spawn): report or the traceback."""
    try:
        worker = Worker(cfg, index)
        asyncio.run(worker.main(outbox.put, lambda name: events[name].wait()))
    except BaseException:
        outbox.put(("error", index, traceback.format_exc()))
