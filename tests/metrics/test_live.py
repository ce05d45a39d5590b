"""
The counters of a real ``twistd -n improto --metrics ...``, scraped from
its real endpoint while real clients talk to it: each test drives traffic
and checks the counters moved by exactly what the clients saw.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from improto.testing import free_port
from tests import rawhttp, wsframes
from tests.metrics.scrape import Samples, scrape, value, wait_for
from tests.serverproc import ServerProcess, start_server
from tests.wsclient import raw_client, read_close_code

TIMEOUT = 5
NATIVE = ["improto.v1"]


def recv_json(ws: ClientConnection) -> dict:
    return json.loads(ws.recv(timeout=TIMEOUT))


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ServerProcess, int]]:
    """A server with its metrics on a port of their own; yields (server, metrics port)."""
    port = free_port()
    server = start_server("--rate", "0", "--metrics", f"tcp:{port}:interface=127.0.0.1")
    try:
        yield server, port
    finally:
        server.stop()


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_five_group_messages_are_five_in_and_five_out(served: tuple[ServerProcess, int]) -> None:
    server, port = served
    before = scrape(port)
    with connect(server.ws_url("alice")) as alice, connect(server.ws_url("bob")) as bob:
        for i in range(5):
            alice.send(f"hello {i}")
        assert [recv_json(bob)["msg"] for _ in range(5)] == [f"hello {i}" for i in range(5)]
        during = wait_for(port, lambda s: delta(before, s, "improto_deliveries_total", kind="group") >= 5)
        assert delta(before, during, "improto_messages_in_total", kind="group") == 5
        # Alice does not get her own messages back: five deliveries, to Bob.
        assert delta(before, during, "improto_deliveries_total", kind="group") == 5
        assert value(during, "improto_connections_open") == 2
        assert value(during, "improto_sessions", dialect="seed") == 2
        assert delta(before, during, "improto_connections_accepted_total") == 2
    after = wait_for(port, lambda s: value(s, "improto_connections_open") == 0)
    assert value(after, "improto_sessions", dialect="seed") == 0


def test_private_and_echo_messages_are_counted_by_kind(served: tuple[ServerProcess, int]) -> None:
    server, port = served
    before = scrape(port)
    with connect(server.ws_url("carol"), subprotocols=NATIVE) as carol, \
            connect(server.ws_url("dave"), subprotocols=NATIVE) as dave:
        assert recv_json(carol)["type"] == recv_json(dave)["type"] == "welcome"
        during = wait_for(port, lambda s: value(s, "improto_sessions", dialect="native") >= 2)
        carol.send(json.dumps({"type": "private", "to": "dave", "msg": "psst", "id": "p1"}))
        assert recv_json(dave)["msg"] == "psst"
        with connect(f"{server.ws}/echo") as echo:
            for i in range(3):
                echo.send(f"echo {i}")
                assert echo.recv(timeout=TIMEOUT) == f"echo {i}"
            during = scrape(port)
            assert value(during, "improto_sessions", dialect="echo") == 1
    assert delta(before, during, "improto_messages_in_total", kind="private") == 1
    assert delta(before, during, "improto_deliveries_total", kind="private") == 1
    assert delta(before, during, "improto_messages_in_total", kind="echo") == 3
    assert delta(before, during, "improto_deliveries_total", kind="echo") == 3


def test_error_frames_are_counted_by_code(served: tuple[ServerProcess, int]) -> None:
    server, port = served
    before = scrape(port)
    with connect(server.ws_url("erin"), subprotocols=NATIVE) as erin:
        recv_json(erin)  # welcome
        erin.send(json.dumps({"type": "send", "group": "elsewhere", "msg": "x", "id": "1"}))
        erin.send(json.dumps({"type": "send", "group": "elsewhere", "msg": "y", "id": "2"}))
        erin.send("{not json")
        codes = [recv_json(erin) for _ in range(3)]
    assert [c.get("code") for c in codes] == ["not_a_member", "not_a_member", "bad_json"]
    after = scrape(port)
    assert delta(before, after, "improto_error_frames_total", code="not_a_member") == 2
    assert delta(before, after, "improto_error_frames_total", code="bad_json") == 1
    assert delta(before, after, "improto_messages_in_total", kind="group") == 0


def test_a_refused_origin_is_counted(served: tuple[ServerProcess, int]) -> None:
    server, port = served
    before = scrape(port)
    response = rawhttp.handshake(server.port, "/ws/frank", origin="http://evil.example")
    response.close()
    assert response.status == 403
    after = scrape(port)
    assert delta(before, after, "improto_connections_refused_total", reason="origin") == 1
    assert delta(before, after, "improto_connections_accepted_total") == 0


def test_a_bad_nickname_is_refused_and_its_1008_counted(served: tuple[ServerProcess, int]) -> None:
    server, port = served
    before = scrape(port)
    with pytest.raises(ConnectionClosed) as closed, connect(server.ws_url("x" * 40)) as ws:
        ws.recv(timeout=TIMEOUT)
        ws.recv(timeout=TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    after = wait_for(port, lambda s: delta(before, s, "improto_close_codes_sent_total", code="1008") == 1)
    assert delta(before, after, "improto_connections_refused_total", reason="bad_name") == 1
    assert delta(before, after, "improto_error_frames_total", code="bad_name") == 1


def test_autobahns_own_1007_close_is_counted(served: tuple[ServerProcess, int]) -> None:
    server, port = served
    before = scrape(port)
    sock = raw_client(server.port, "/ws/jack")
    try:
        sock.sendall(wsframes.client_frame(b"\xff\xfe not UTF-8"))
        assert read_close_code(sock) == 1007
    finally:
        sock.close()
    wait_for(port, lambda s: delta(before, s, "improto_close_codes_sent_total", code="1007") == 1)


def test_the_metrics_port_serves_only_metrics_and_the_main_port_none(
    served: tuple[ServerProcess, int],
) -> None:
    server, port = served
    for where, path in ((port, "/"), (port, "/healthz"), (server.port, "/metrics")):
        response = rawhttp.get(where, path)
        response.close()
        assert response.status == 404, (where, path)
    samples = scrape(port)
    value(samples, "improto_backend_state", state="ok")
    assert value(samples, "improto_backend_state", state="ok") == 1
    assert value(samples, "improto_backend_state", state="unavailable") == 0
    assert value(samples, "improto_channels_held") >= 0
    assert value(samples, "process_resident_memory_bytes") > 0


def test_metrics_main_rate_limits_per_user_and_handshake_timeouts() -> None:
    """--metrics main; refusals that need limits of their own."""
    server = start_server(
        "--metrics", "main", "--rate", "1", "--max-connections-per-user", "1",
        "--handshake-timeout", "0.5",
    )
    try:
        before = scrape(server.port)
        with connect(server.ws_url("gina"), subprotocols=NATIVE) as gina:
            recv_json(gina)
            for i in range(8):
                gina.send(json.dumps({"type": "send", "group": "lobby", "msg": str(i), "id": str(i)}))
            replies = [recv_json(gina) for _ in range(8)]
            limited = sum(r.get("code") == "rate_limited" for r in replies)
            assert 0 < limited < 8
            with pytest.raises(ConnectionClosed) as closed, connect(server.ws_url("gina")) as again:
                again.recv(timeout=TIMEOUT)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4029
        silent = socket.create_connection(("127.0.0.1", server.port))
        try:
            assert (rawhttp.closed_within(silent, 5) or b"").startswith(b"HTTP/1.1 408")
        finally:
            silent.close()
        after = scrape(server.port)
        assert delta(before, after, "improto_rate_limited_frames_total") == limited
        assert delta(before, after, "improto_error_frames_total", code="rate_limited") == limited
        assert delta(before, after, "improto_messages_in_total", kind="group") == 8 - limited
        assert delta(before, after, "improto_connections_refused_total", reason="per_user") == 1
        assert delta(before, after, "improto_close_codes_sent_total", code="4029") == 1
        assert delta(before, after, "improto_connections_refused_total",
                     reason="handshake_timeout") >= 1
    finally:
        server.stop()


def test_redis_backend_metrics(redis_url: str, redis_prefix: str) -> None:
    port = free_port()
    server = start_server("--rate", "0", "--backend", f"{redis_url}?prefix={redis_prefix}",
                          "--metrics", f"tcp:{port}:interface=127.0.0.1")
    try:
        before = scrape(port)
        with connect(server.ws_url("hana")) as hana, connect(server.ws_url("ivan")) as ivan, \
                connect(f"{server.ws}/echo") as echo:
            for i in range(3):
                hana.send(f"via redis {i}")
                echo.send(f"echo {i}")  # each one a PUBLISH (presence is published by its scripts)
            assert [recv_json(ivan)["msg"] for _ in range(3)] == [f"via redis {i}" for i in range(3)]
            assert [echo.recv(timeout=5) for _ in range(3)] == [f"echo {i}" for i in range(3)]
            after = scrape(port)
        published = delta(before, after, "improto_backend_publish_seconds_count")
        assert published >= 3
        assert value(after, "improto_backend_publish_seconds_bucket", le="+Inf") == \
            value(after, "improto_backend_publish_seconds_count")
        assert value(after, "improto_backend_state", state="ok") == 1
        # Two users and the lobby, at least, while they are connected.
        assert value(after, "improto_redis_channels_subscribed") >= 3
        assert value(after, "improto_channels_held") >= 3
        assert value(after, "improto_backend_reconnects_total", link="commands") >= 0
    finally:
        server.stop()
