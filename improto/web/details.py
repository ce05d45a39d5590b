"""
A connection's start, without the system calls Autobahn makes for nothing.

Autobahn's ``WebSocketAdapterProtocol.connectionMade`` builds the
connection's ``TransportDetails`` with ``create_transport_details``, which
asks the kernel for the process id and the thread id on every connection
(``getpid``, ``gettid``), and then sets ``TCP_NODELAY`` on the socket,
which twisted.web's ``HTTPChannel`` set a moment before for every
connection that reaches improto through it. Three system calls of the
seventeen a short-lived connection makes (``strace -c`` of
``benchmarks/run.py --peers --only handshake``).

:func:`connection_made` is that method re-stated (its source and
``create_transport_details``'s are hash-pinned in
``tests/web/test_details.py``): the ids are read once per process and
thread, and ``TCP_NODELAY`` is left alone when the factory says an HTTP
channel set it. The details are equal to Autobahn's (the same test
compares them); a TLS transport gets Autobahn's own, as they read the
certificate and channel binding.

On a plain TCP connection the details are not even made until something
asks for them (:class:`LazyTransportDetails`; improto never does):
0.36 KiB less per idle connection. Autobahn reads them once more, in
``_onOpen``, only to see whether the connection is secure, which a plain
one is not (``LinkProtocol._onOpen``, also re-stated and pinned).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from autobahn.twisted.util import create_transport_details, peer2str
from autobahn.wamp.types import TransportDetails
from twisted.internet.interfaces import ISSLTransport

_pid: int | None = None
#: ``threading.get_native_id()`` by ``threading.get_ident()`` (no system call).
_native_ids: dict[int, int] = {}


def _forget_ids() -> None:
    global _pid
    _pid = None
    _native_ids.clear()


os.register_at_fork(after_in_child=_forget_ids)


def _own_ids() -> tuple[int, int]:
    global _pid
    if _pid is None:
        _pid = os.getpid()
    ident = threading.get_ident()
    tid = _native_ids.get(ident)
    if tid is None:
        tid = _native_ids[ident] = threading.get_native_id()
    return _pid, tid


def plain_details(peer: str, is_server: bool) -> TransportDetails:
    """
    What Autobahn's ``create_transport_details`` makes for a plain (not
    TLS) transport whose peer is ``peer``, with the ids remembered.
    """
    pid, tid = _own_ids()
    return TransportDetails(
        channel_type=TransportDetails.CHANNEL_TYPE_TCP,
        channel_framing=TransportDetails.CHANNEL_FRAMING_WEBSOCKET,
        peer=peer, is_server=is_server, own_pid=pid, own_tid=tid,
        own_fd=-1, is_secure=False, channel_id={}, peer_cert=None,
    )


class LazyTransportDetails:
    """
    A plain connection's ``_transport_details``, made when first read
    (then kept in the connection's ``__dict__``, which takes precedence):
    everything in them follows from ``link.peer``, read at the start.
    """

    def __get__(self, link: Any, owner: Any = None) -> Any:
        if link is None:
            return self
        details = link.__dict__["_transport_details"] = plain_details(link.peer, link.is_server)
        return details


def connection_made(link: Any) -> None:
    """
    Autobahn's ``WebSocketAdapterProtocol.connectionMade`` for ``link``,
    minus its ``log.debug`` call: a TLS transport's details are Autobahn's,
    a plain one's are left to ``link``'s class's :class:`LazyTransportDetails`
    (:func:`plain_details`), and ``TCP_NODELAY`` is not set where
    ``link.factory.no_delay_set`` says it is.
    """
    transport = link.transport
    if ISSLTransport.providedBy(transport):
        details = link._transport_details = create_transport_details(transport, link.is_server)
        details.channel_framing = TransportDetails.CHANNEL_FRAMING_WEBSOCKET
        link.peer = details.peer
    else:
        # Autobahn's __init__ put an empty one there.
        link.__dict__.pop("_transport_details", None)
        link.peer = peer2str(transport)
    if not getattr(link.factory, "no_delay_set", False):
        try:
            transport.setTcpNoDelay(link.tcpNoDelay)
        except Exception:  # Autobahn's bare except: e.g. a UNIX socket refuses it
            pass
    link._connectionMade()
