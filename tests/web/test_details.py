"""
improto/web/details.py: a connection's start as Autobahn's, without asking
the kernel for the process and thread ids per connection, nor setting
TCP_NODELAY a second time.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import socket
import threading

import pytest
import pytest_twisted
import txaio
from autobahn.twisted import util as autobahn_util
from autobahn.twisted.websocket import WebSocketAdapterProtocol
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import directlyProvides

from improto.backends.memory import MemoryBackend
from improto.router import Router
from improto.settings import Settings
from improto.web import details
from improto.web.chat import ChatServerFactory, ChatServerProtocol
from tests import wsframes

REVIEW = "Autobahn changed what improto/web/details.py re-states: re-review it against this version"
#: sha256 of the sources details.py re-states, as reviewed.
REVIEWED = {
    "WebSocketAdapterProtocol.connectionMade":
        "63ceb64088e44552f7a6d6e97d2d7b5449cfb3dd86484c5e009356a316c6f7fe",
    "create_transport_details": "85822ec863135e7794566e7f64dc01936ee2477952f2657d5bb76429ac1aa3aa",
    "WebSocketAdapterProtocol._onOpen":
        "6cfc286602a22405a3d7f543183a5d5533104c134ef225feec0375c57376f0b3",
}
SOURCES = {
    "WebSocketAdapterProtocol.connectionMade": WebSocketAdapterProtocol.connectionMade,
    "create_transport_details": autobahn_util.create_transport_details,
    "WebSocketAdapterProtocol._onOpen": WebSocketAdapterProtocol._onOpen,
}


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_autobahns_source_is_the_reviewed_one(name: str) -> None:
    source = inspect.getsource(SOURCES[name])
    assert hashlib.sha256(source.encode()).hexdigest() == REVIEWED[name], f"{REVIEW}: {name}"


@pytest.mark.parametrize("peer", [IPv4Address("TCP", "10.1.2.3", 40000),
                                  IPv6Address("TCP", "::1", 40001)])
@pytest.mark.parametrize("is_server", [True, False])
def test_the_details_are_autobahns(peer, is_server: bool) -> None:
    transport = StringTransport(peerAddress=peer)
    ours = details.plain_details(autobahn_util.peer2str(transport), is_server).marshal()
    theirs = autobahn_util.create_transport_details(transport, is_server).marshal()
    assert ours == theirs
    assert ours["own_pid"] == os.getpid() and ours["own_tid"] == threading.get_native_id()


def test_the_ids_are_read_once_per_process_and_thread(monkeypatch) -> None:
    details._forget_ids()  # as after a fork
    asked: list[str] = []
    thread = [1]

    class Threads:
        @staticmethod
        def get_ident() -> int:
            return thread[0]

        @staticmethod
        def get_native_id() -> int:
            asked.append("tid")
            return 100 + thread[0]

    monkeypatch.setattr(details, "threading", Threads)
    monkeypatch.setattr(os, "getpid", lambda: asked.append("pid") or 7)
    for port in range(3):
        d = details.plain_details(f"tcp4:127.0.0.1:{port}", True)
        assert (d.own_pid, d.own_tid) == (7, 101)
    assert asked == ["pid", "tid"]
    thread[0] = 2
    assert details._own_ids() == (7, 102) and asked == ["pid", "tid", "tid"]
    details._forget_ids()
    assert details._own_ids() == (7, 102) and asked == ["pid", "tid", "tid", "pid", "tid"]
    details._forget_ids()


class NoDelayRecorder(StringTransport):
    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.no_delay: list[bool] = []

    def setTcpNoDelay(self, enabled: bool) -> None:  # noqa: N802 - Twisted's name
        self.no_delay.append(enabled)

    def unregisterProducer(self) -> None:
        self.producer = None


def started(no_delay_set: bool, debug: bool = False) -> tuple[ChatServerProtocol, NoDelayRecorder]:
    backend = MemoryBackend()
    backend.start()
    factory = ChatServerFactory(Router(backend), Settings(), MemoryReactorClock())
    factory.no_delay_set = no_delay_set
    link = factory.buildProtocol(None)
    transport = NoDelayRecorder()
    level = txaio.get_global_log_level()
    txaio.set_global_log_level("debug" if debug else level)
    try:
        link.makeConnection(transport)
        link.dataReceived(wsframes.handshake("/ws/alice"))
    finally:
        txaio.set_global_log_level(level)
    return link, transport


@pytest.mark.parametrize("debug", [False, True])
def test_a_connection_starts_as_on_autobahn(debug: bool) -> None:
    link, transport = started(no_delay_set=False, debug=debug)
    assert transport.value().startswith(b"HTTP/1.1 101 ")
    assert transport.no_delay == [True]
    assert link.peer == "tcp4:127.0.0.1:40000"
    expected = autobahn_util.create_transport_details(transport, True)
    assert link.transport_details.marshal() == expected.marshal()


def test_a_plain_connection_makes_its_details_only_when_asked() -> None:
    link, transport = started(no_delay_set=True)
    assert link.state == link.STATE_OPEN and "_transport_details" not in vars(link)
    expected = autobahn_util.create_transport_details(transport, True).marshal()
    assert link.transport_details.marshal() == expected
    assert vars(link)["_transport_details"] is link.transport_details  # made once


def test_a_secure_connection_gets_autobahns_details_at_once_and_completed_at_open(monkeypatch) -> None:
    made: list[str] = []
    real = autobahn_util.create_transport_details

    def secure(transport, is_server):
        made.append("start")
        d = real(StringTransport(peerAddress=transport.getPeer()), is_server)
        d.is_secure = True
        return d

    completed: list[str] = []
    monkeypatch.setattr(details, "create_transport_details", secure)
    import autobahn.twisted.websocket as autobahn_tw

    monkeypatch.setattr(autobahn_tw, "transport_channel_id", lambda *a: completed.append("id") or b"x")
    monkeypatch.setattr(autobahn_tw, "extract_peer_certificate", lambda t: completed.append("cert"))
    backend = MemoryBackend()
    backend.start()
    factory = ChatServerFactory(Router(backend), Settings(), MemoryReactorClock())
    link = factory.buildProtocol(None)
    transport = NoDelayRecorder()
    directlyProvides(transport, ISSLTransport)
    link.makeConnection(transport)
    link.dataReceived(wsframes.handshake("/ws/alice"))
    assert link.state == link.STATE_OPEN and made == ["start"] and completed == ["id", "cert"]
    assert link.transport_details.is_secure and link.transport_details.channel_id == {"tls-unique": b"x"}


def test_no_second_no_delay_when_an_http_channel_set_it() -> None:
    link, transport = started(no_delay_set=True)
    assert transport.value().startswith(b"HTTP/1.1 101 ") and transport.no_delay == []


def test_while_debugging_autobahn_sets_no_delay_itself() -> None:
    _, transport = started(no_delay_set=True, debug=True)
    assert transport.no_delay == [True]


@pytest_twisted.ensureDeferred
async def test_behind_twisted_web_the_socket_has_no_delay() -> None:
    """What ``no_delay_set`` stands for: through twisted.web, as deployed, TCP_NODELAY is on."""
    from twisted.internet import reactor

    from improto.web.resources import root_resource
    from improto.web.site import GuardedSite

    opened: list[ChatServerProtocol] = []

    class Recording(ChatServerProtocol):
        def onOpen(self) -> None:
            super().onOpen()
            opened.append(self)

    backend = MemoryBackend()
    backend.start()
    router = Router(backend)
    settings = Settings()
    resource = root_resource(router, settings, reactor)
    resource.upgrade_factory(b"/ws/x").protocol = Recording
    port = reactor.listenTCP(0, GuardedSite(resource, settings, reactor), interface="127.0.0.1")
    clients = []
    try:
        for name in ("direct", "trickled"):
            sock = socket.create_connection(("127.0.0.1", port.getHost().port))
            clients.append(sock)
            request = wsframes.handshake(f"/ws/{name}")
            if name == "direct":
                sock.sendall(request)
            else:  # a head in pieces goes through twisted.web's Request
                sock.sendall(request[:20])
                await deferLater(reactor, 0.05, lambda: None)
                sock.sendall(request[20:])
        deadline = reactor.seconds() + 10
        while len(opened) < 2 and reactor.seconds() < deadline:
            await deferLater(reactor, 0.01, lambda: None)
        assert len(opened) == 2
        for link in opened:
            handle = link.transport.getHandle()
            assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        for sock in clients:
            sock.close()
        await port.stopListening()
