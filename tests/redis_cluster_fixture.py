"""
A private Redis Cluster (3 masters + 3 replicas) and a private Sentinel
set-up (master, replica, 3 sentinels), on free loopback ports, never 6379.

``redis_cluster`` (session scope) is a :class:`RedisClusterServers`
built with ``redis-cli --cluster create``; a fault test that kills a
master uses ``fresh_redis_cluster`` (its own cluster, torn down after).
``redis_sentinel`` is a :class:`SentinelServers`, one per test.
Everything lives in a temporary directory removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from improto.testing import cluster_port
from tests.redis_fixture import find_redis_server, free_port

NODE_TIMEOUT_MS = 1000


def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} within {timeout}s")


class _Processes:
    def __init__(self, prefix: str) -> None:
        self.dir = tempfile.mkdtemp(prefix=prefix)
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def spawn(self, port: int, *args: str, sentinel: bool = False) -> None:
        here = os.path.join(self.dir, str(port))
        os.makedirs(here, exist_ok=True)
        argv = [find_redis_server()]
        if sentinel:
            conf = os.path.join(here, "sentinel.conf")
            with open(conf, "w") as f:
                f.write("".join(f"{line}\n" for line in args))
            argv += [conf, "--sentinel"]
            args = ()
        argv += ["--port", str(port), "--bind", "127.0.0.1", "--dir", here,
                 "--logfile", os.path.join(here, "log"), *args]
        if not sentinel:
            argv += ["--save", "", "--appendonly", "no"]
        self.processes[port] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: redis.Redis(port=port, socket_timeout=0.5).ping(), 10, f"redis on {port} did not answer")

    def kill(self, port: int) -> None:
        process = self.processes.pop(port)
        process.send_signal(signal.SIGKILL)
        process.wait(5)

    def cleanup(self) -> None:
        for process in self.processes.values():
            process.kill()
            process.wait(5)
        self.processes.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisClusterServers(_Processes):
    """Six cluster nodes; ``url`` names two of them as seeds."""

    def __init__(self) -> None:
        super().__init__("improto-cluster-")
        self.ports = [cluster_port() for _ in range(6)]

    @property
    def url(self) -> str:
        return f"redis-cluster://127.0.0.1:{self.ports[0]},127.0.0.1:{self.ports[1]}/"

    def start(self) -> None:
        for port in self.ports:
            self.spawn(port, "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                       "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                       # A replica always stands for election, however old its data.
                       "--cluster-replica-validity-factor", "0")
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30,
        )
        _wait(self.healthy, 20, "cluster not ok")
        _wait(self.replicas_synced, 20, "replicas not in sync")

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2)

    def healthy(self) -> bool:
        alive = [p for p in self.ports if p in self.processes]
        return all(self.client(p).cluster("info")["cluster_state"] == "ok" for p in alive)

    def replicas_synced(self) -> bool:
        roles = [self.client(p).info("replication") for p in self.ports]
        replicas = [r for r in roles if r["role"] == "slave"]
        return len(replicas) == 3 and all(r["master_link_status"] == "up" for r in replicas)

    def masters(self) -> dict[int, list[tuple[int, int]]]:
        """Port of each live master -> its slot ranges."""
        port = next(p for p in self.ports if p in self.processes)
        out: dict[int, list[tuple[int, int]]] = {}
        for start, end, master, *_ in self.client(port).execute_command("CLUSTER SLOTS"):
            out.setdefault(int(master[1]), []).append((int(start), int(end)))
        return out

    def owner_of_slot(self, slot: int) -> int:
        return next(p for p, ranges in self.masters().items() if any(a <= slot <= b for a, b in ranges))


class SentinelServers(_Processes):
    """A master, its replica and three sentinels watching it as ``mymaster``."""

    name = "mymaster"

    def __init__(self) -> None:
        super().__init__("improto-sentinel-")
        self.master, self.replica = free_port(), free_port()
        self.sentinels = [free_port() for _ in range(3)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinels)
        return f"redis-sentinel://{hosts}/{self.name}/0"

    def start(self) -> None:
        self.spawn(self.master)
        self.spawn(self.replica, "--replicaof", "127.0.0.1", str(self.master))
        for port in self.sentinels:
            self.spawn(port, f"sentinel monitor {self.name} 127.0.0.1 {self.master} 2",
                       f"sentinel down-after-milliseconds {self.name} 1000",
                       f"sentinel failover-timeout {self.name} 5000", sentinel=True)
        _wait(lambda: self.client(self.replica).info("replication")["master_link_status"] == "up", 10,
              "replica not in sync")

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2)

    def current_master(self) -> int:
        host, port = self.client(self.sentinels[0]).execute_command("SENTINEL", "get-master-addr-by-name", self.name)
        return int(port)


def _running(servers: Any) -> Iterator[Any]:
    """Start ``servers``, yield them, and clean up however the test ends."""
    try:
        servers.start()
        yield servers
    finally:
        servers.cleanup()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    yield from _running(RedisClusterServers())


@pytest.fixture
def fresh_redis_cluster() -> Iterator[RedisClusterServers]:
    yield from _running(RedisClusterServers())


@pytest.fixture
def redis_sentinel() -> Iterator[SentinelServers]:
    yield from _running(SentinelServers())
