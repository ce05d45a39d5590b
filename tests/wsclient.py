"""
The end-to-end tests' side of a WebSocket: the ``websockets`` sync client
for what a well-behaved client does, a raw socket for frames no library
would send.

Silence is proved with a barrier, never with a pause: a server keeps the
order of what it writes to one connection, so when the next frame a client
gets is a marker sent *after* the thing that must not reach it, nothing
reached it (see :func:`assert_next_is_marker`).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tests import wsframes

#: Upper bound for every wait on a frame, in seconds.
TIMEOUT = 5


def recv_json(ws: Any, timeout: float = TIMEOUT) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=timeout))


def assert_next_is_marker(ws: Any, marker: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    """
    The barrier: the next frame ``ws`` receives is the message ``marker``,
    so nothing the server sent it before the marker is unaccounted for.
    """
    frame = recv_json(ws, timeout)
    assert frame.get("msg") == marker, f"{frame} arrived before the marker {marker!r}"
    return frame


def raw_client(port: int, path: str) -> socket.socket:
    """A socket that has done the opening handshake and nothing else."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(wsframes.handshake(path))
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(4096)
    assert response.startswith(b"HTTP/1.1 101")
    return sock


def read_close_code(sock: socket.socket) -> int:
    """Read until the server's close frame; its status code."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        frames = wsframes.parse_frames(data)
        closes = [p for op, p, _ in frames if op == 8]
        if closes:
            return wsframes.close_code(closes[0])
    raise AssertionError("connection ended without a close frame")


@contextmanager
def chatting(server: Any) -> Iterator[Callable[[], None]]:
    """
    Two users, alice and bob, in the lobby of ``server`` (a
    ``tests.serverproc.ServerProcess``); the callable checks that they still
    talk, and is called once more on the way out: whatever the test did to
    the server, other users' sessions kept working.
    """
    from websockets.sync.client import connect

    with connect(server.ws_url("alice")) as alice, connect(server.ws_url("bob")) as bob:
        def still_chatting() -> None:
            text = f"still here {time.monotonic()}"
            alice.send(text)
            assert recv_json(bob)["msg"] == text

        still_chatting()
        yield still_chatting
        still_chatting()
