"""``--port``: TCP and TLS ports get a listen queue that survives a reconnect storm."""

from __future__ import annotations

import pytest

from improto.tap import LISTEN_BACKLOG, Options, with_listen_backlog


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("tcp:8080", f"tcp:8080:backlog={LISTEN_BACKLOG}"),
        ("tcp:8080:interface=127.0.0.1", f"tcp:8080:interface=127.0.0.1:backlog={LISTEN_BACKLOG}"),
        ("tcp6:8080", f"tcp6:8080:backlog={LISTEN_BACKLOG}"),
        ("ssl:8443:privateKey=k.pem", f"ssl:8443:privateKey=k.pem:backlog={LISTEN_BACKLOG}"),
        ("tcp:8080:backlog=10", "tcp:8080:backlog=10"),
        ("unix:/tmp/improto.sock", "unix:/tmp/improto.sock"),
    ],
)
def test_tcp_and_tls_ports_get_the_backlog_unless_they_set_one(given: str, used: str) -> None:
    assert with_listen_backlog(given) == used


def test_the_option_applies_it() -> None:
    options = Options()
    options.parseOptions(["--port", "tcp:0:interface=127.0.0.1"])
    assert options["port"] == f"tcp:0:interface=127.0.0.1:backlog={LISTEN_BACKLOG}"


def test_the_listening_socket_really_has_it() -> None:
    """The endpoint string reaches Twisted's listen(2) as the backlog."""
    from twisted.internet import endpoints
    from twisted.internet.testing import MemoryReactor

    reactor = MemoryReactor()
    endpoints.serverFromString(reactor, with_listen_backlog("tcp:0")).listen(None)
    [(_port, _factory, backlog, _interface)] = reactor.tcpServers
    assert backlog == LISTEN_BACKLOG
