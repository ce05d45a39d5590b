"""
A private Redis for the tests, never the shared one on 6379.

``redis_server`` (session scope) starts ``redis-server`` on a free
loopback port with persistence off, or wraps ``REDIS_URL`` when that is
set; ``redis_url`` is its URL; ``redis_prefix`` is a key prefix unique to
one test, whose keys are deleted afterwards (and only those);
``private_redis`` is a :class:`RedisServer` a fault test may stop, start
and pause (the session's one unless ``REDIS_URL`` is set, and restarted
afterwards if the test left it down).

Import these from ``conftest.py``::

    from tests.redis_fixture import private_redis, redis_prefix, redis_server, redis_url  # noqa: F401
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator

import pytest
import redis


def find_redis_server() -> str:
    path = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if path is None:
        pytest.fail(
            "redis-server not found: install it (Debian: apt-get install redis-server) "
            "or set REDIS_URL to a Redis the tests may use",
            pytrace=False,
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server process that tests may stop and start on the same port."""

    def __init__(self, port: int | None = None, extra_args: list[str] | None = None) -> None:
        self.binary = find_redis_server()
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self.external = False
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="improto-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        assert self.process is None, "already running"
        log_path = os.path.join(self._dir, "redis.log")
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self._dir,
                "--logfile", log_path,
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                with open(log_path, errors="replace") as f:
                    tail = f.read()[-2000:]
                raise RuntimeError(f"redis-server on port {self.port} exited at start:\n{tail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout}s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


class ExternalRedis:
    """``REDIS_URL``: used as is, and never stopped, paused or restarted."""

    external = True

    def __init__(self, url: str) -> None:
        self.url = url

    def cleanup(self) -> None:
        pass


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | ExternalRedis]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield ExternalRedis(url)
        return
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer | ExternalRedis) -> str:
    return redis_server.url


@pytest.fixture
def private_redis(redis_server: RedisServer | ExternalRedis) -> Iterator[RedisServer]:
    """
    A server the test may stop, restart or pause: the session's own one,
    or, when that is an external ``REDIS_URL``, a private one for this test.
    """
    if isinstance(redis_server, RedisServer):
        yield redis_server
        if redis_server.process is None:
            redis_server.start()
        return
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    prefix = f"improto-test:{uuid.uuid4().hex[:10]}:"
    yield prefix
    try:
        client = redis.Redis.from_url(redis_url, socket_timeout=5)
        keys = list(client.scan_iter(match=prefix.replace("*", r"\*") + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    except redis.ConnectionError:
        # A fault test may leave the server down; its keys went with it.
        pass
