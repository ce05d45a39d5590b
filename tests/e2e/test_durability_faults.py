"""
Acked means delivered, through node crashes and a Redis restart.

Three ``twistd improto`` nodes share one private redis-server with AOF on
(``appendfsync always``). Native clients send acked group messages
without pause while one node is SIGKILLed and restarted and then Redis is
restarted; a client that loses its connection reconnects to a live node
with ``?resume=`` and retries its unanswered message with the same id.
At the end every client reconnects once more and resumes. Then every
message any client got an ack for must have reached every other client
exactly once, in seq order, or be inside a gap the server reported.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from typing import Any
from urllib.parse import quote

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.redis_fixture import RedisServer
from tests.serverproc import ServerProcess, start_server

pytestmark = [
    pytest.mark.slow,
    # Clients here reconnect by replacing their connection, not in a with block.
    pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager"),
]

NATIVE = ["improto.v1"]
CLIENTS = 6  # two on each node, so two lose theirs
STREAM = "group:lobby"


def backend_url(redis_url: str) -> str:
    options = {"prefix": "durable:", "reconnect_max_delay": 0.3, "heartbeat_interval": 0.5,
               "heartbeat_ttl": 2, "command_timeout": 2}
    return redis_url + "?" + "&".join(f"{k}={quote(str(v))}" for k, v in options.items())


def healthy(node: ServerProcess) -> bool:
    try:
        with urllib.request.urlopen(f"{node.http}/healthz", timeout=1) as response:
            return json.load(response)["status"] == "ok"
    except Exception:
        return False


class Client:
    """One user sending acked messages and recording every message it gets."""

    def __init__(self, name: str, nodes: list[ServerProcess], first: int) -> None:
        self.name = name
        self.nodes = nodes
        self.next_node = first
        self.ws: Any = None
        self.last_seq = 0
        self.delivered: list[tuple[int, str]] = []
        self.gaps: list[tuple[int, int]] = []
        #: (last seq seen, seq that came after it) for each violation.
        self.out_of_order: list[tuple[int, int]] = []
        self.acked: dict[str, int] = {}
        self.sent = 0
        #: backend_unavailable answers (then retried with the same id).
        self.refused = 0
        self.connections = 0
        self.resumed = threading.Event()
        self.stop = threading.Event()

    # -- connection ---------------------------------------------------------------

    def connect(self, deadline: float) -> None:
        while True:
            node = self.nodes[self.next_node % len(self.nodes)]
            self.next_node += 1
            url = f"{node.ws}/ws/{self.name}"
            if self.last_seq or self.ws is not None:
                url += f"?resume={STREAM}:{self.last_seq}"
            try:
                self.ws = connect(url, subprotocols=NATIVE, open_timeout=2, close_timeout=1)
                self.connections += 1
                return
            except (OSError, TimeoutError, ConnectionClosed, Exception):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def handle(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "message" and frame.get("stream") == STREAM:
            if frame["seq"] <= self.last_seq:
                self.out_of_order.append((self.last_seq, frame["seq"]))
            self.last_seq = max(self.last_seq, frame["seq"])
            self.delivered.append((frame["seq"], frame["msg"]))
        elif kind == "gap" and frame["stream"] == STREAM:
            self.gaps.append((frame["from_seq"], frame["to_seq"]))
            self.last_seq = max(self.last_seq, frame["to_seq"])
        elif kind == "resumed":
            self.resumed.set()

    def pump(self, timeout: float) -> dict[str, Any] | None:
        frame = json.loads(self.ws.recv(timeout=timeout))
        self.handle(frame)
        return frame

    # -- sending ------------------------------------------------------------------

    def send_until_answered(self, msg: str) -> None:
        """Send ``msg`` (its own id) until acked; across reconnects, same id."""
        for _attempt in range(40):
            if self.stop.is_set() and _attempt:
                return
            try:
                self.ws.send(json.dumps({"type": "send", "group": "lobby", "msg": msg, "id": msg}))
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline:
                    frame = self.pump(max(0.01, deadline - time.monotonic()))
                    if frame and frame.get("id") == msg and frame["type"] == "ack":
                        self.acked[msg] = frame["seq"]
                        return
                    if frame and frame.get("id") == msg and frame["type"] == "error":
                        assert frame["code"] == "backend_unavailable", frame
                        self.refused += 1
                        time.sleep(0.1)
                        break
                else:
                    raise TimeoutError("no answer")
            except (ConnectionClosed, TimeoutError, OSError):
                self.ws.close_socket() if hasattr(self.ws, "close_socket") else None
                self.connect(time.monotonic() + 20)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            self.sent += 1
            self.send_until_answered(f"{self.name}-{i}")
            i += 1

    def final_resume(self) -> None:
        """Reconnect once more, resume, and read until the server says resumed."""
        self.ws.close()
        self.resumed.clear()
        self.connect(time.monotonic() + 10)
        deadline = time.monotonic() + 15
        while not self.resumed.is_set():
            self.pump(max(0.01, deadline - time.monotonic()))
        self.ws.close()


def test_acked_messages_survive_node_kill_and_redis_restart(tmp_path) -> None:
    redis = RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"])
    redis.start()
    url = backend_url(redis.url)
    args = ("--backend", url, "--rate", "0", "--history-size", "100000")
    nodes = [start_server(*args) for _ in range(3)]
    clients = [Client(f"user{i}", nodes, i) for i in range(CLIENTS)]
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    try:
        # Everyone is connected (so owed every message) before anyone sends.
        for c in clients:
            c.connect(time.monotonic() + 10)
        for t in threads:
            t.start()

        def acked() -> int:
            return sum(len(c.acked) for c in clients)

        def wait_for_more(count: int, timeout: float = 20) -> None:
            target = acked() + count
            deadline = time.monotonic() + timeout
            while acked() < target:
                assert time.monotonic() < deadline, f"acks stalled at {acked()}"
                time.sleep(0.05)

        wait_for_more(100)
        victim = nodes[1]
        victim.process.kill()
        victim.process.wait(5)
        wait_for_more(100)
        nodes[1] = start_server(*args, port=victim.port)
        wait_for_more(100)
        redis.stop()
        time.sleep(0.5)  # clients get backend_unavailable and retry meanwhile
        redis.start()
        deadline = time.monotonic() + 20
        while not all(healthy(n) for n in nodes):
            assert time.monotonic() < deadline, "nodes did not recover from the Redis restart"
            time.sleep(0.1)
        wait_for_more(100)
        for c in clients:
            c.stop.set()
        for t in threads:
            t.join(30)
            assert not t.is_alive(), "a client did not finish"
        for c in clients:
            c.final_resume()
    finally:
        for node in nodes:
            node.stop()
        redis.cleanup()

    all_acked = {seq: msg for c in clients for msg, seq in c.acked.items()}
    assert len(all_acked) == sum(len(c.acked) for c in clients), "two acks share a seq"
    sent = sum(c.sent for c in clients)
    delivered = gapped = 0
    for c in clients:
        assert c.out_of_order == [], f"{c.name}: duplicates or out of order"
        seqs = [seq for seq, _ in c.delivered]
        assert seqs == sorted(set(seqs)), f"{c.name}: duplicates or out of order"
        got = dict(c.delivered)
        for seq, msg in all_acked.items():
            if msg.startswith(c.name + "-"):
                continue  # a sender does not get its own message live
            if any(lo <= seq <= hi for lo, hi in c.gaps):
                gapped += 1
                continue
            assert got.get(seq) == msg, f"{c.name} never got acked {msg} (seq {seq})"
            delivered += 1
    print(
        f"\nsent {sent}, acked {len(all_acked)}, delivered {delivered} "
        f"(acked x other clients), gapped {gapped}, "
        f"refused and retried {sum(c.refused for c in clients)}, "
        f"connections {sum(c.connections for c in clients)}"
    )
    assert len(all_acked) >= 400
