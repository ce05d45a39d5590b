"""Redis URLs and options, the start-up probe, and what happens without the ``redis`` extra."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import reactor

from improto.backends.interface import BackendState, BackendUnavailable
from improto.backends.redis import RedisBackend
from improto.backends.redis.options import check_reachable, parse_redis_url
from improto.backends.url import backend_from_url, check_backend_url
from tests.backends.support import envelope
from tests.redis_fixture import RedisServer, free_port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize(
    "url, complaint",
    [
        ("http://127.0.0.1:6379/0", "scheme"),
        ("rediss://127.0.0.1:6379/0", "scheme"),
        ("127.0.0.1:6379", "scheme"),
        ("redis://127.0.0.1:port/0", "port"),
        ("redis://127.0.0.1:70000/0", "port"),
        ("redis://127.0.0.1:0/0", "port"),
        ("redis://127.0.0.1:6379/db1", "database"),
        ("redis://127.0.0.1:6379/-1", "database"),
        ("redis://127.0.0.1:6379/0?colour=blue", "unknown option"),
        ("redis://127.0.0.1:6379/0?heartbeat_ttl=soon", "number"),
        ("redis://127.0.0.1:6379/0?heartbeat_interval=5&heartbeat_ttl=4", "heartbeat_ttl"),
        ("redis://127.0.0.1:6379/0?command_timeout=0", "command_timeout must be > 0"),
        ("redis://:s3cret@127.0.0.1:x/0", "port"),
    ],
)
def test_malformed_url_is_a_one_line_value_error(url: str, complaint: str) -> None:
    with pytest.raises(ValueError) as info:
        RedisBackend.from_url(url, reactor=reactor)
    message = str(info.value)
    assert complaint in message
    assert "\n" not in message
    assert "s3cret" not in message


def test_backend_urls_choose_the_redis_backend() -> None:
    assert check_backend_url("redis://127.0.0.1:6379/0?heartbeat_ttl=20") == "redis"
    with pytest.raises(ValueError, match="port"):
        check_backend_url("redis://127.0.0.1:x/0")
    node = backend_from_url("redis://127.0.0.1:6390/2?prefix=chat:", reactor, node_id="n1")
    assert isinstance(node, RedisBackend)
    assert (node.address.port, node.address.db, node.options.prefix, node.node_id) == (6390, 2, "chat:", "n1")


def test_url_parts_and_options() -> None:
    address, options = parse_redis_url("redis://user:p%40ss@redis.example:6380/2?heartbeat_interval=1&heartbeat_ttl=3")
    assert (address.host, address.port, address.db) == ("redis.example", 6380, 2)
    assert (address.username, address.password) == ("user", "p@ss")
    assert address.auth_args() == ["user", "p@ss"]
    assert options == {"heartbeat_interval": 1.0, "heartbeat_ttl": 3.0}
    assert "p@ss" not in repr(address)
    backend = RedisBackend.from_url("redis://", reactor=reactor, prefix="x:", heartbeat_interval=2.0, heartbeat_ttl=7)
    assert (backend.address.host, backend.address.port, backend.address.db) == ("localhost", 6379, 0)
    assert (backend.options.prefix, backend.options.heartbeat_ttl) == ("x:", 7)
    assert backend.address.auth_args() is None
    assert parse_redis_url("redis://:pw@h")[0].auth_args() == ["pw"]
    assert parse_redis_url("redis://h/0?batch_writes=off")[1] == {"batch_writes": False}


@pytest_twisted.ensureDeferred
async def test_unreachable_at_start_fails_in_one_line() -> None:
    port = free_port()
    node = RedisBackend.from_url(f"redis://127.0.0.1:{port}/0", reactor=reactor)
    with pytest.raises(BackendUnavailable) as info:
        await node.start()
    assert str(info.value) == f"cannot reach Redis at 127.0.0.1:{port}: Connection refused"
    assert node.health().state is BackendState.STARTING
    assert "Connection refused" in node.health().detail
    with pytest.raises(BackendUnavailable):
        await node.publish("group:lobby", envelope())
    await node.stop()


def test_check_reachable(redis_url: str) -> None:
    check_reachable(redis_url, timeout=2)
    port = free_port()
    with pytest.raises(BackendUnavailable) as info:
        check_reachable(f"redis://127.0.0.1:{port}/0", timeout=2)
    assert str(info.value) == f"cannot reach Redis at 127.0.0.1:{port}: Connection refused"
    with pytest.raises(ValueError, match="port"):
        check_reachable("redis://127.0.0.1:nope/0")


def test_check_reachable_names_a_server_that_is_not_redis() -> None:
    """Something listening that closes at once, or speaks another protocol."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(2)
    port = listener.getsockname()[1]

    def serve() -> None:
        for answer in (b"", b"HTTP/1.1 400 Bad Request\r\n\r\n"):
            conn, _ = listener.accept()
            conn.recv(1024)
            conn.sendall(answer)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with pytest.raises(BackendUnavailable, match="connection closed by Redis"):
            check_reachable(f"redis://127.0.0.1:{port}/0", timeout=2)
        with pytest.raises(BackendUnavailable, match="protocol error") as info:
            check_reachable(f"redis://127.0.0.1:{port}/0", timeout=2)
        assert "\n" not in str(info.value)
    finally:
        thread.join(5)
        listener.close()


@pytest_twisted.ensureDeferred
async def test_password_and_database(redis_prefix: str) -> None:
    import redis

    server = RedisServer(extra_args=["--requirepass", "s3cret"])
    server.start()
    try:
        for url, complaint in [
            (f"redis://:nope@127.0.0.1:{server.port}/0", "refused AUTH"),
            (f"redis://127.0.0.1:{server.port}/0", "refused AUTH"),
            (f"redis://:s3cret@127.0.0.1:{server.port}/99", "refused db 99"),
        ]:
            with pytest.raises(BackendUnavailable, match=complaint) as info:
                check_reachable(url, timeout=2)
            assert "\n" not in str(info.value) and "s3cret" not in str(info.value)
        check_reachable(f"redis://:s3cret@127.0.0.1:{server.port}/3", timeout=2)
        wrong = RedisBackend.from_url(f"redis://:nope@127.0.0.1:{server.port}/0", reactor=reactor)
        with pytest.raises(BackendUnavailable, match="refused AUTH") as info:
            await wrong.start()
        assert "nope" not in str(info.value)
        bad_db = RedisBackend.from_url(f"redis://:s3cret@127.0.0.1:{server.port}/99", reactor=reactor)
        with pytest.raises(BackendUnavailable, match="refused db 99"):
            await bad_db.start()
        node = RedisBackend.from_url(
            f"redis://:s3cret@127.0.0.1:{server.port}/3", reactor=reactor, prefix=redis_prefix
        )
        await node.start()
        assert await node.publish("user:alice", envelope()) == 0
        await node.presence_add("online", "alice")
        client = redis.Redis(port=server.port, password="s3cret", db=3)
        assert client.hkeys(f"{redis_prefix}presence:online") == [b"alice"]
        assert client.exists(f"{redis_prefix}node:{node.node_id}") == 1
        names = sorted(info["name"] for info in client.client_list() if info["name"].startswith("improto:"))
        assert names == [f"improto:{node.node_id}:cmd", f"improto:{node.node_id}:sub"]
        await node.stop()
        assert client.keys(f"{redis_prefix}*") == []
        client.close()
    finally:
        server.cleanup()


_WITHOUT_EXTRA = r"""
import importlib.abc, sys

class NoRedisExtra(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("hiredis", "redis"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoRedisExtra())

import improto
from improto.backends.url import backend_from_url, check_backend_url
from improto.backends.interface import Envelope
from twisted.internet.task import Clock

backend = backend_from_url("memory://", Clock())
backend.start()
router = improto.Router(backend)
seen = []
backend.subscribe("user:alice", seen.append)
assert backend.publish("user:alice", Envelope("n", "s", b"hi")).result == 1 and len(seen) == 1
for call in (check_backend_url, lambda url: backend_from_url(url, Clock())):
    try:
        call("redis://127.0.0.1:6379/0")
    except ValueError as e:
        print(e)
try:
    from improto import RedisBackend
except ModuleNotFoundError as e:
    print(e)
print("hiredis" in sys.modules, "redis" in sys.modules)
"""


def test_the_core_runs_without_the_redis_extra() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRA],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    assert result.returncode == 0, result.stderr
    message = "the Redis backend needs: pip install 'improto[redis]'"
    assert result.stdout.splitlines() == [message, message, message, "False False"]
