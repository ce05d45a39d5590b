"""
Hand-made HTTP requests and WebSocket handshakes over a real socket, to see
exactly what a client sees: the status line, the headers and the body.
"""

from __future__ import annotations

import socket
import time

import attrs

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
TIMEOUT = 5.0


@attrs.define
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    sock: socket.socket

    def close(self) -> None:
        self.sock.close()


def upgrade_headers(port: int, origin: str | None = None, host: str | None = None) -> dict[str, str]:
    headers = {
        "Host": host or f"127.0.0.1:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
    }
    if origin is not None:
        headers["Origin"] = origin
    return headers


def send_request(port: int, path: str, headers: dict[str, str]) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    sock.sendall("\r\n".join(lines).encode("utf-8"))
    return sock


def read_response(sock: socket.socket) -> Response:
    """The response head, and as much body as its Content-Length says."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    status = int(status_line.split(" ", 2)[1])
    length = int(headers.get("content-length", "0") or 0)
    if status != 101:
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return Response(status, headers, body, sock)


def get(port: int, path: str, headers: dict[str, str] | None = None) -> Response:
    """A plain GET (``Connection: close``)."""
    return read_response(send_request(
        port, path, {"Host": f"127.0.0.1:{port}", "Connection": "close", **(headers or {})}))


def handshake(port: int, path: str, origin: str | None = None, host: str | None = None) -> Response:
    return read_response(send_request(port, path, upgrade_headers(port, origin, host)))


#: Once an answer has started to arrive, how long ``closed_within`` waits
#: for the close that follows it, past its own deadline.
ANSWER_GRACE = 2.0


def closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """
    What the server sent before it closed the socket, or None if it is
    still open (and sent nothing). An answer that starts to arrive within
    ``seconds`` is read to the close for up to :data:`ANSWER_GRACE` more:
    a server writes an answer and closes in two steps, and on a loaded
    machine the deadline could fall between them (the answer was then
    dropped, and the next call saw only the close).
    """
    deadline = time.monotonic() + seconds
    received = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        if not received:
            deadline = max(deadline, time.monotonic() + ANSWER_GRACE)
        received += chunk
    return None if not received else received
