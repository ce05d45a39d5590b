"""
``twistd --logger improto.logs.json_observer -n improto``: every line the
server writes is one JSON object with the stable fields.
"""

from __future__ import annotations

import json
import time

from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from improto.logs import STABLE_FIELDS, event_line, event_record
from improto.testing import captured_events
from tests import rawhttp
from tests.serverproc import ServerProcess, start_server

JSON_LOGGER = ("--logger", "improto.logs.json_observer")


def records(server: ServerProcess) -> list[dict]:
    lines = server.log().splitlines()
    assert lines, "the server wrote nothing"
    parsed = []
    for line in lines:
        record = json.loads(line)  # every line, not just most
        assert isinstance(record, dict), line
        assert list(record)[:4] == list(STABLE_FIELDS), line
        parsed.append(record)
    return parsed


def wait_for_record(server: ServerProcess, text: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in records(server) if text in r["text"]]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} record in:\n{server.log()}")
        time.sleep(0.05)


def test_a_server_with_the_json_logger_writes_only_json_lines() -> None:
    server = start_server("--rate", "0", twistd_args=JSON_LOGGER)
    try:
        started = wait_for_record(server, "improto listening on")
        assert started["namespace"] == "improto.service"
        assert started["level"] == "info"
        assert started["port"] == server.port
        assert started["time"].endswith("Z")
        response = rawhttp.handshake(server.port, "/ws/x", origin="http://evil.example")
        response.close()
        assert response.status == 403
        refused = wait_for_record(server, "Refused WebSockets from origin")
        assert refused["origin"] == "http://evil.example"
    finally:
        server.stop()
    records(server)  # the shutdown lines too
    assert any("Server Shut Down" in r["text"] for r in records(server))


def test_event_record_keeps_serialisable_fields_and_adds_a_traceback() -> None:
    log = Logger(namespace="improto.test")
    with captured_events() as events:
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            log.failure("Boom for {who}", Failure(), who="alice", thing=object())
        log.warn("Plain {n}", n=3)
    failed, plain = (event_record(e) for e in events)
    assert failed["level"] == "critical" and failed["namespace"] == "improto.test"
    assert failed["text"] == "Boom for alice"
    assert failed["who"] == "alice" and "thing" not in failed
    assert "ZeroDivisionError" in failed["traceback"]
    assert plain["level"] == LogLevel.warn.name and plain["n"] == 3
    line = event_line(events[1])
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line)["text"] == "Plain 3"
