"""
History, inbox and idempotent sends across real nodes sharing one Redis:
what one node stores, another serves.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.serverproc import ServerProcess, start_server

NATIVE = ["improto.v1"]


@pytest.fixture
def two_nodes(redis_url: str, redis_prefix: str) -> Iterator[list[ServerProcess]]:
    backend = f"{redis_url}?prefix={quote(redis_prefix)}"
    nodes = [start_server("--backend", backend, "--rate", "0") for _ in range(2)]
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def until(ws: ClientConnection, kind: str, timeout: float = 5) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        if frame["type"] == kind:
            return frame


def test_inbox_and_idempotency_across_nodes(two_nodes: list[ServerProcess]) -> None:
    one, two = two_nodes
    with connect(f"{one.ws}/ws/bob", subprotocols=NATIVE) as bob:
        until(bob, "welcome")
    with connect(f"{two.ws}/ws/alice", subprotocols=NATIVE) as alice:
        until(alice, "welcome")
        alice.send(json.dumps({"type": "private", "to": "bob", "msg": "while away", "id": "p1"}))
        ack = until(alice, "ack")
        assert (ack["status"], ack["stream"], ack["seq"]) == ("stored", "user:bob", 1)
        alice.send(json.dumps({"type": "private", "to": "nobody", "msg": "?", "id": "p2"}))
        assert until(alice, "error")["code"] == "unknown_user"
    # bob comes back on the other node and gets what was stored for him.
    with connect(f"{two.ws}/ws/bob", subprotocols=NATIVE) as bob, \
            connect(f"{one.ws}/ws/alice", subprotocols=NATIVE) as alice:
        got = until(bob, "private")
        assert (got["msg"], got["seq"], got["stream"]) == ("while away", 1, "user:bob")
        until(alice, "welcome")
        # A send retried on another node (same user, same id) is acked with the
        # first seq and delivered once.
        frame = json.dumps({"type": "send", "group": "lobby", "msg": "once", "id": "s1"})
        alice.send(frame)
        first = until(alice, "ack")
        with connect(f"{two.ws}/ws/alice", subprotocols=NATIVE) as alice_again:
            until(alice_again, "welcome")
            alice_again.send(frame)
            again = until(alice_again, "ack")
            assert (again["seq"], again["stream"]) == (first["seq"], first["stream"])
            alice_again.send(json.dumps({"type": "send", "group": "lobby", "msg": "barrier", "id": "s2"}))
            until(alice_again, "ack")
        texts = []
        while "barrier" not in texts:
            texts.append(until(bob, "message")["msg"])
        assert texts == ["once", "barrier"]
        # History of the lobby, read on either node, has both, in order.
        bob.send(json.dumps({"type": "history", "group": "lobby", "id": "h"}))
        page = until(bob, "history")
        assert [m["msg"] for m in page["messages"]] == ["once", "barrier"]
        assert page["last_seq"] == page["messages"][-1]["seq"]
