"""
Several ``twistd improto --backend redis://...`` processes sharing one real
Redis behave as one server: exact expectations of who receives what. The
``cluster`` tests run twice: on a standalone Redis and, with
``--backend redis-cluster://...``, on a private Redis Cluster (3 masters +
3 replicas).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from websockets.sync.client import connect

from tests.serverproc import ServerProcess, start_server
from tests.wsclient import assert_next_is_marker

TIMEOUT = 5
NATIVE = ["improto.v1"]


def backend_url(redis_url: str, prefix: str, **options: object) -> str:
    query = "&".join(f"{k}={quote(str(v), safe=':')}" for k, v in {"prefix": prefix, **options}.items())
    return f"{redis_url}?{query}"


def recv_json(ws, timeout: float = TIMEOUT) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def recv_kind(ws, kind: str, timeout: float = TIMEOUT) -> dict:
    """The next frame of ``type`` kind, skipping presence chatter."""
    deadline = time.monotonic() + timeout
    while True:
        frame = recv_json(ws, max(0.01, deadline - time.monotonic()))
        if frame["type"] == kind:
            return frame


def health(node: ServerProcess) -> dict:
    try:
        with urllib.request.urlopen(f"{node.http}/healthz", timeout=2) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        return json.load(e)


def who(ws, group: str = "lobby") -> list[str]:
    ws.send(json.dumps({"type": "who", "group": group, "id": "who"}))
    return recv_kind(ws, "who")["users"]


@pytest.fixture(params=["redis", "redis-cluster"])
def cluster(request: pytest.FixtureRequest, redis_prefix: str) -> Iterator[list[ServerProcess]]:
    if request.param == "redis":
        base = request.getfixturevalue("redis_url")
    else:
        base = request.getfixturevalue("redis_cluster").url
    url = backend_url(base, redis_prefix, heartbeat_interval=0.5, heartbeat_ttl=2)
    nodes = [start_server("--backend", url, "--rate", "0") for _ in range(3)]
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def test_group_and_private_messages_cross_nodes_exactly(cluster) -> None:
    one, two, three = cluster
    with connect(f"{one.ws}/ws/alice") as alice, \
            connect(f"{two.ws}/ws/alice") as alice_phone, \
            connect(f"{two.ws}/ws/bob") as bob, \
            connect(f"{three.ws}/ws/{quote('小二')}") as xiaoer:
        alice.send(json.dumps({"username": "alice", "msg": "hi all"}))
        for ws in (alice_phone, bob, xiaoer):
            got = recv_json(ws)
            assert (got["type"], got["sender"], got["msg"]) == ("message", "alice", "hi all")
        # Barriers, not waits: a marker on the same channel comes after
        # anything that must not have arrived.
        bob.send(json.dumps({"username": "bob", "msg": "marker-a"}))
        assert_next_is_marker(alice, "marker-a")
        for ws in (alice_phone, xiaoer):
            assert_next_is_marker(ws, "marker-a")

        xiaoer.send(json.dumps({"to_user": "alice", "msg": "私聊"}))
        for ws in (alice, alice_phone):
            got = recv_json(ws)
            assert (got["type"], got["from_user"], got["msg"]) == ("private", "小二", "私聊")
        alice.send(json.dumps({"username": "alice", "msg": "marker-b"}))
        for ws in (bob, xiaoer, alice_phone):
            assert_next_is_marker(ws, "marker-b")

        bob.send(json.dumps({"to_user": "nobody", "msg": "?"}))
        error = recv_json(bob)
        assert error["code"] == "unknown_user"
        bob.send(json.dumps({"username": "bob", "msg": "marker-c"}))
        for ws in (alice, alice_phone, xiaoer):
            assert_next_is_marker(ws, "marker-c")


def test_native_presence_join_leave_and_who_across_nodes(cluster, request: pytest.FixtureRequest) -> None:
    one, two, three = cluster
    with connect(f"{one.ws}/ws/nat", subprotocols=NATIVE) as nat:
        assert recv_json(nat)["type"] == "welcome"
        nat.send(json.dumps({"type": "join", "group": "dev", "id": "j"}))
        assert recv_kind(nat, "ack") == {"type": "ack", "id": "j"}
        with connect(f"{two.ws}/ws/max", subprotocols=NATIVE) as mx:
            arrived = [recv_kind(nat, "presence"), recv_kind(nat, "presence")]
            if request.node.callspec.params["cluster"] == "redis-cluster":
                # The "online" and "lobby" presence sets live on two shards:
                # their answers, and so the two announcements, may cross.
                arrived.sort(key=lambda f: f["event"] != "online")
            assert arrived == [
                {"type": "presence", "event": "online", "user": "max"},
                {"type": "presence", "event": "join", "user": "max", "group": "lobby"},
            ]
            mx.send(json.dumps({"type": "join", "group": "dev", "id": "1"}))
            assert recv_kind(mx, "ack")["id"] == "1"
            assert recv_kind(nat, "presence") == {"type": "presence", "event": "join", "user": "max", "group": "dev"}
            with connect(f"{three.ws}/ws/max", subprotocols=NATIVE) as max_laptop:
                recv_json(max_laptop)
                max_laptop.send(json.dumps({"type": "join", "group": "dev", "id": "2"}))
                assert recv_kind(max_laptop, "ack")["id"] == "2"
                # Already in dev on another node: no second announcement, which
                # would come on dev's channel before this marker.
                mx.send(json.dumps({"type": "send", "group": "dev", "msg": "marker-1", "id": "m1"}))
                assert_next_is_marker(nat, "marker-1")
                assert recv_kind(mx, "ack")["id"] == "m1"
                assert recv_kind(max_laptop, "message")["msg"] == "marker-1"
                assert who(nat, "dev") == ["max", "nat"]
                mx.send(json.dumps({"type": "send", "group": "dev", "msg": "ship it", "id": "3"}))
                assert recv_kind(mx, "ack")["id"] == "3"
                assert recv_kind(nat, "message")["msg"] == "ship it"
                assert recv_kind(max_laptop, "message")["msg"] == "ship it"
            # max is still in dev through his first connection: once node three
            # has let the laptop go, a marker on dev's channel comes next.
            deadline = time.monotonic() + TIMEOUT
            while health(three)["router"]["sessions"]:
                assert time.monotonic() < deadline, "node three kept the closed session"
                time.sleep(0.05)
            mx.send(json.dumps({"type": "send", "group": "dev", "msg": "marker-2", "id": "m2"}))
            assert_next_is_marker(nat, "marker-2")
            assert recv_kind(mx, "ack")["id"] == "m2"
            mx.send(json.dumps({"type": "leave", "group": "dev", "id": "4"}))
            assert recv_kind(nat, "presence") == {"type": "presence", "event": "leave", "user": "max", "group": "dev"}
            assert who(nat, "dev") == ["nat"]
        last = [recv_kind(nat, "presence"), recv_kind(nat, "presence")]
        expected = [
            {"type": "presence", "event": "leave", "user": "max", "group": "lobby"},
            {"type": "presence", "event": "offline", "user": "max"},
        ]
        if request.node.callspec.params["cluster"] == "redis-cluster":
            # Two channels on two shards: each in order, not with each other.
            last.sort(key=lambda f: f["event"])
        assert last == expected
        assert who(nat) == ["nat"]


def test_a_node_that_dies_leaves_presence_within_the_ttl(cluster) -> None:
    one, two, _ = cluster
    with connect(f"{one.ws}/ws/nat", subprotocols=NATIVE) as nat:
        recv_json(nat)
        doomed = connect(f"{two.ws}/ws/ghost")
        deadline = time.monotonic() + TIMEOUT  # the handshake returns before presence is registered
        while who(nat) != ["ghost", "nat"]:
            assert time.monotonic() < deadline, "ghost never became present"
            time.sleep(0.05)
        two.process.send_signal(signal.SIGKILL)
        two.process.wait(5)
        deadline = time.monotonic() + 6  # ttl 2 s, plus slack for a loaded machine
        while who(nat) != ["nat"]:
            assert time.monotonic() < deadline, "the dead node's user is still present"
            time.sleep(0.2)
        doomed.close_socket()
        nat.send(json.dumps({"type": "private", "to": "ghost", "msg": "?", "id": "p"}))
        assert recv_kind(nat, "error")["code"] == "unknown_user"


def test_healthz_reports_the_redis_backend(cluster) -> None:
    body = health(cluster[0])
    assert body["status"] == "ok" and body["backend"]["state"] == "ok"


def test_redis_restart_mid_traffic_loses_nothing_silently(private_redis, redis_prefix) -> None:
    url = backend_url(private_redis.url, redis_prefix, reconnect_max_delay=0.5)
    one = start_server("--backend", url, "--rate", "0")
    two = start_server("--backend", url, "--rate", "0")
    try:
        with connect(f"{one.ws}/ws/sender", subprotocols=NATIVE) as sender, \
                connect(f"{two.ws}/ws/reader") as reader:
            recv_json(sender)
            answers: dict[str, dict] = {}
            sent_while_down: set[str] = set()
            received: list[str] = []
            down = threading.Event()
            stop_reading = threading.Event()

            def read_all() -> None:
                while not stop_reading.is_set():
                    try:
                        received.append(json.loads(reader.recv(timeout=0.2))["msg"])
                    except TimeoutError:
                        continue

            def send(i: int) -> None:
                msg_id = str(i)
                if down.is_set():
                    sent_while_down.add(msg_id)
                sender.send(json.dumps({"type": "send", "group": "lobby", "msg": msg_id, "id": msg_id}))
                while msg_id not in answers:
                    frame = recv_json(sender)
                    if frame["type"] in ("ack", "error"):
                        answers[frame["id"]] = frame

            reading = threading.Thread(target=read_all, daemon=True)
            reading.start()
            i = 0
            for _ in range(20):  # before the outage
                send(i)
                i += 1
            before = set(map(str, range(i)))

            private_redis.stop()
            down.set()
            for _ in range(20):  # Redis is down
                send(i)
                i += 1
            assert health(one)["backend"]["state"] == "unavailable"
            private_redis.start()
            down.clear()

            deadline = time.monotonic() + 15
            while not all(health(n)["status"] == "ok" for n in (one, two)):
                assert time.monotonic() < deadline, "nodes did not recover"
                send(i)  # answered while the nodes catch up
                i += 1
                time.sleep(0.05)
            after_start = i
            for _ in range(20):  # both nodes healthy again
                send(i)
                i += 1
            time.sleep(0.5)
            stop_reading.set()
            reading.join(5)

        # Every message was answered: an ack or an error, never silence.
        assert set(answers) == set(map(str, range(i)))
        acked = {k for k, v in answers.items() if v["type"] == "ack"}
        errors = {k: v["code"] for k, v in answers.items() if v["type"] == "error"}
        assert set(errors.values()) <= {"backend_unavailable"}
        # While Redis was down nothing was acked.
        assert not (sent_while_down & acked)
        # Before and after the outage, acked means delivered on the other node.
        healthy = before | set(map(str, range(after_start, i)))
        assert healthy <= acked
        assert healthy <= set(received)
        # Nothing arrives that was refused.
        assert not (set(received) & set(errors))
    finally:
        one.stop()
        two.stop()
    # The outage is logged once when it starts and once when it ends.
    for node in (one, two):
        assert node.log().count("publish and presence fail until it is back") == 1
        assert node.log().count("restored after") == 1


def test_twistd_with_a_malformed_or_unreachable_redis_fails_in_one_line(tmp_path) -> None:
    import subprocess

    from tests.serverproc import free_port, twistd_path

    for url, fragment in [
        ("redis://127.0.0.1:notaport/0", "port"),
        (f"redis://127.0.0.1:{free_port()}/0", "cannot reach Redis"),
    ]:
        result = subprocess.run(
            [twistd_path(), "-n", "--pidfile=", "improto", "--backend", url],
            cwd=tmp_path, capture_output=True, text=True, timeout=30,
            env={**os.environ},
        )
        output = result.stdout + result.stderr
        assert result.returncode != 0
        assert fragment in output
        assert "Traceback" not in output


@pytest.mark.slow
def test_redis_cluster_master_killed_mid_traffic_every_message_answered(fresh_redis_cluster, redis_prefix) -> None:
    """
    Two twistd nodes on a private Redis Cluster; SIGKILL the master that
    owns the lobby's channel while a client sends to the lobby: every
    message is acked or refused with ``backend_unavailable``, the replica
    takes over, and acks resume, each acked message delivered on the other node.
    """
    from improto.backends.redis.sharded import channel_key
    from improto.backends.redis.slots import key_slot

    servers = fresh_redis_cluster
    url = backend_url(servers.url, redis_prefix, reconnect_max_delay=0.3, command_timeout=1)
    one = start_server("--backend", url, "--rate", "0")
    two = start_server("--backend", url, "--rate", "0")
    victim = servers.owner_of_slot(key_slot(channel_key(redis_prefix.encode(), "group:lobby")))
    try:
        with connect(f"{one.ws}/ws/sender", subprotocols=NATIVE) as sender, \
                connect(f"{two.ws}/ws/reader", subprotocols=NATIVE) as reader:
            recv_json(sender)
            answers: dict[str, dict] = {}
            received: list[str] = []
            stop_reading = threading.Event()

            def read_all() -> None:
                while not stop_reading.is_set():
                    try:
                        frame = json.loads(reader.recv(timeout=0.2))
                    except TimeoutError:
                        continue
                    if frame.get("type") == "message":
                        received.append(frame["msg"])

            def send(i: int) -> dict:
                msg_id = str(i)
                sender.send(json.dumps({"type": "send", "group": "lobby", "msg": msg_id, "id": msg_id}))
                while msg_id not in answers:
                    frame = recv_json(sender)
                    if frame["type"] in ("ack", "error") and "id" in frame:
                        answers[frame["id"]] = frame
                return answers[msg_id]

            reading = threading.Thread(target=read_all, daemon=True)
            reading.start()
            i = 0
            for _ in range(20):
                assert send(i)["type"] == "ack"
                i += 1
            servers.kill(victim)
            killed_at = time.monotonic()
            refused = 0
            resumed = None
            while time.monotonic() - killed_at < 20:
                answer = send(i)
                i += 1
                if answer["type"] == "error":
                    refused += 1
                elif refused and all(health(n)["status"] == "ok" for n in (one, two)):
                    resumed = time.monotonic() - killed_at
                    break
                time.sleep(0.02)
            assert resumed is not None, "delivery did not resume after the failover"
            after = i
            for _ in range(20):
                assert send(i)["type"] == "ack"
                i += 1
            deadline = time.monotonic() + TIMEOUT
            acked = {k for k, v in answers.items() if v["type"] == "ack"}
            while not acked <= set(received) and time.monotonic() < deadline:
                time.sleep(0.05)
            stop_reading.set()
            reading.join(5)
        errors = {k: v["code"] for k, v in answers.items() if v["type"] == "error"}
        # Acked while the other node was still resubscribing on the new
        # master: published to nobody there, like any message published
        # while a subscriber reconnects (at-most-once, see cluster.py).
        missed = acked - set(received)
        print(f"\ncluster failover (twistd): {i} sent, {len(acked)} acked, {len(errors)} refused "
              f"{sorted(set(errors.values()))}, {len(missed)} acked before both nodes were healthy "
              f"and missed; acks resumed {resumed:.2f}s after the kill")
        assert set(answers) == set(map(str, range(i)))
        assert set(errors.values()) <= {"backend_unavailable"} and errors
        healthy = set(map(str, range(20))) | set(map(str, range(after, i)))
        assert healthy <= acked
        assert healthy <= set(received)
        assert all(int(m) in range(20, after) for m in missed)
        assert not (set(received) & set(errors))
    finally:
        one.stop()
        two.stop()
