"""
Safe on the public internet: origins, connection limits and timeouts, on a
real ``twistd improto`` over real sockets. Each refusal is shown by the
exact status or close code the client sees, and by another user's session
that keeps working meanwhile.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests import rawhttp
from tests.serverproc import ServerProcess, start_server
from tests.wsclient import chatting

TIMEOUT = 5


def recv_json(ws: ClientConnection) -> dict:
    return json.loads(ws.recv(timeout=TIMEOUT))


@contextmanager
def running(*args: str) -> Iterator[ServerProcess]:
    server = start_server("--rate", "0", *args)
    try:
        yield server
    finally:
        server.stop()




def wait_for_log(server: ServerProcess, text: str, timeout: float = TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in server.log():
            return server.log()
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the server log:\n{server.log()}")


# -- origins ----------------------------------------------------------------------


def test_default_refuses_cross_site_origins_with_403_logged_once() -> None:
    with running() as server, chatting(server) as still_chatting:
        for _ in range(3):
            refused = rawhttp.handshake(server.port, "/ws/mallory", origin="http://evil.example")
            assert refused.status == 403
            assert b"http://evil.example" in refused.body
            refused.close()
        null = rawhttp.handshake(server.port, "/ws/mallory", origin="null")
        assert null.status == 403
        null.close()
        same = rawhttp.handshake(server.port, "/ws/carol", origin=f"http://127.0.0.1:{server.port}")
        assert same.status == 101
        same.close()
        terminal = rawhttp.handshake(server.port, "/ws/dave")
        assert terminal.status == 101
        terminal.close()
        still_chatting()
        log = wait_for_log(server, "Refused WebSockets from origin 'http://evil.example'")
    assert log.count("from origin 'http://evil.example'") == 1
    assert "Traceback" not in log


def test_same_origin_follows_the_host_header_and_default_ports() -> None:
    with running() as server, chatting(server) as still_chatting:
        cases = [
            ("http://chat.example", "chat.example", 101),
            ("https://chat.example", "chat.example", 101),
            ("http://chat.example:80", "chat.example", 101),
            ("http://chat.example:8080", "chat.example:8080", 101),
            ("http://chat.example:8081", "chat.example:8080", 403),
            ("http://chat.example:8080", "chat.example", 403),
            ("http://evil.example", "chat.example", 403),
        ]
        for origin, host, status in cases:
            response = rawhttp.handshake(server.port, "/ws/erin", origin=origin, host=host)
            assert response.status == status, (origin, host)
            response.close()
        still_chatting()


def test_allowed_origins_accept_what_users_write_and_warn_about_the_impossible() -> None:
    patterns = "http://good.example,https://*.friends.example,null,good.example,http://x.example/"
    with running("--allowed-origins", patterns) as server, chatting(server) as still_chatting:
        cases = [
            ("http://good.example", 101),
            ("http://good.example:80", 101),
            ("https://good.example", 403),
            ("https://a.friends.example", 101),
            ("https://a.friends.example:443", 101),
            ("https://friends.example.evil", 403),
            ("null", 101),
            ("http://x.example", 403),
        ]
        for origin, status in cases:
            response = rawhttp.handshake(server.port, "/ws/frank", origin=origin)
            assert response.status == status, origin
            response.close()
        still_chatting()
    warnings = [line for line in server.log().splitlines() if "can never match" in line]
    assert len(warnings) == 1
    assert "good.example, http://x.example/" in warnings[0]


# -- connections per address and per user -------------------------------------------


def test_connections_per_ip_get_429_and_closing_one_frees_a_slot() -> None:
    with running("--max-connections-per-ip", "3") as server, \
            chatting(server) as still_chatting:
        with connect(server.ws_url("carol")) as third:
            refused = rawhttp.handshake(server.port, "/ws/dave")
            assert refused.status == 429
            assert b"Too many WebSocket connections from 127.0.0.1 (at most 3)" in refused.body
            refused.close()
            echo = rawhttp.handshake(server.port, "/echo")
            assert echo.status == 429  # the echo route counts too
            echo.close()
            still_chatting()
            third.close()
        deadline = time.monotonic() + TIMEOUT
        while True:  # the slot comes back once the server saw the close
            again = rawhttp.handshake(server.port, "/ws/dave")
            again.close()
            if again.status == 101 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert again.status == 101
    assert server.log().count("Refused WebSockets from 127.0.0.1") == 1


def test_connections_per_user_are_closed_with_4029() -> None:
    with running("--max-connections-per-user", "2") as server, \
            chatting(server) as still_chatting:
        with connect(server.ws_url("alice")) as second:
            with connect(server.ws_url("alice")) as third:
                with pytest.raises(ConnectionClosed) as closed:
                    third.recv(timeout=TIMEOUT)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4029
            assert "at most 2" in closed.value.rcvd.reason
            still_chatting()
            second.close()
        deadline = time.monotonic() + TIMEOUT
        while True:
            with connect(server.ws_url("alice"), subprotocols=["improto.v1"]) as again:
                try:
                    if recv_json(again)["type"] == "welcome":
                        break
                except ConnectionClosed:
                    if time.monotonic() > deadline:
                        raise
            time.sleep(0.05)


def test_groups_per_connection_are_limited_by_max_groups() -> None:
    with running("--max-groups", "2") as server, chatting(server) as still_chatting:
        with connect(server.ws_url("nat"), subprotocols=["improto.v1"]) as nat:
            assert recv_json(nat)["type"] == "welcome"
            nat.send(json.dumps({"type": "join", "group": "dev", "id": "1"}))
            nat.send(json.dumps({"type": "join", "group": "ops", "id": "2"}))
            answers = {}
            while len(answers) < 2:
                frame = recv_json(nat)
                if "id" in frame:
                    answers[frame["id"]] = frame
            assert answers["1"] == {"type": "ack", "id": "1"}  # lobby + dev
            assert answers["2"]["type"] == "error" and answers["2"]["code"] == "bad_message"
        still_chatting()


# -- sockets that never finish a handshake ---------------------------------------------


def test_handshakes_in_progress_per_ip_get_429() -> None:
    with running("--max-handshakes-per-ip", "2") as server, \
            chatting(server) as still_chatting:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        try:
            deadline = time.monotonic() + TIMEOUT
            while True:  # the server accepts the idle two in its own time
                refused = rawhttp.get(server.port, "/healthz")
                refused.close()
                if refused.status == 429 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert refused.status == 429
            assert b"Too many connections in progress from 127.0.0.1 (at most 2)" in refused.body
            still_chatting()  # WebSockets are not handshakes in progress
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + TIMEOUT
        while rawhttp.get(server.port, "/healthz").status != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_a_silent_socket_is_closed_after_the_idle_timeout() -> None:
    with running("--idle-timeout", "1", "--handshake-timeout", "30") as server, \
            chatting(server) as still_chatting:
        silent = socket.create_connection(("127.0.0.1", server.port))
        assert rawhttp.closed_within(silent, 10) == b""
        silent.close()
        still_chatting()


def test_a_slowloris_handshake_gets_408_within_the_handshake_timeout() -> None:
    with running("--handshake-timeout", "1.5", "--idle-timeout", "30") as server, \
            chatting(server) as still_chatting:
        slow = socket.create_connection(("127.0.0.1", server.port))
        request = b"".join(
            f"{line}\r\n".encode() for line in
            ["GET /ws/slow HTTP/1.1", *(f"{k}: {v}" for k, v in
                                        rawhttp.upgrade_headers(server.port).items())])
        started = time.monotonic()
        answer = None
        for byte in request:  # a byte every 0.1 s: 17 s for the whole head
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                break
            answer = rawhttp.closed_within(slow, 0.1)
            if answer is not None:
                break
        assert answer is not None and answer.startswith(b"HTTP/1.1 408 Request Timeout")
        assert time.monotonic() - started < 10
        slow.close()
        still_chatting()


def test_oversized_request_heads_get_431() -> None:
    with running("--max-header-size", "4096") as server, chatting(server) as still_chatting:
        big = rawhttp.read_response(rawhttp.send_request(
            server.port, "/ws/big", {**rawhttp.upgrade_headers(server.port), "X-Pad": "p" * 5000}))
        assert big.status == 431
        big.close()
        fits = rawhttp.handshake(server.port, "/ws/fits")
        assert fits.status == 101
        fits.close()
        still_chatting()


# -- the echo route ---------------------------------------------------------------------


def test_no_echo_turns_the_echo_route_off() -> None:
    with running("--no-echo") as server, chatting(server) as still_chatting:
        off = rawhttp.handshake(server.port, "/echo")
        assert off.status == 404
        off.close()
        still_chatting()
    with running() as server:
        with connect(f"{server.ws}/echo") as echo:
            echo.send("hello")
            assert echo.recv(timeout=TIMEOUT) == "hello"
