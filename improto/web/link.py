"""
:class:`LinkProtocol`: what every improto WebSocket connection shares.

It is the router's ``SessionLink`` for one connection: it writes frames,
closes with the close codes a server needs, shares one framed broadcast
with its peers, and watches backpressure so a client that stops reading
is dropped instead of buffered for without bound.

Importing it installs :mod:`improto.web.quiet` (Autobahn formats no debug-log
text that nobody logs, and frame writes skip its per-frame ``log.debug``
call); that is the only change to what Autobahn does. What it keeps per
connection is trimmed: no empty ``send_queue`` (:class:`_SendQueue`), no
handshake texts after the open, connection slots as two attributes, and
the protocol options no frame reads on a class
(``improto.web.chat.with_options``). With the memory backend's smaller
presence entries, that took an idle connection from 12.2 to 8.4 KiB
(``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import txaio
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.util import encode_truncate
from autobahn.websocket.compress import PerMessageDeflate
from autobahn.websocket.protocol import TrafficStats, WebSocketProtocol
from autobahn.websocket.utf8validator import Utf8Validator
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from improto.router import Router, Session
from improto.web import details, flush, handshake, quiet, reading
from improto.web.framing import ContextFreeDeflate, compressed_frame, deflate

_log = Logger()
quiet.install()
_OPEN = WebSocketServerProtocol.STATE_OPEN
_CONNECTING = WebSocketServerProtocol.STATE_CONNECTING
_SEND_GROUND = WebSocketServerProtocol.SEND_STATE_GROUND
_DEBUG_LEVELS = frozenset(("debug", "trace"))


class _Succeeded(Deferred[list[Any]]):
    """
    A Deferred that has fired with a success and has no callbacks waiting:
    an errback added to it would be skipped at once, so :meth:`addErrback`
    adds none (one ``_runCallbacks`` pass fewer per message received).
    """

    def addErrback(  # type: ignore[override]
        self, errback: Any, *args: Any, **kwargs: Any
    ) -> Deferred[list[Any]]:
        if self.called and not self.paused and not isinstance(self.result, Failure):
            return self
        return super().addErrback(errback, *args, **kwargs)


#: What ``fire`` returns while nobody listens: stock Autobahn's own result
#: (a fired Deferred of ``[]``), made once. Autobahn only adds an errback,
#: which a success skips, so the shared result never changes.
_NO_LISTENERS: Deferred[list[Any]] = _Succeeded()
_NO_LISTENERS.callback([])
#: True while a broadcast sends at once where a member has nothing
#: buffered (:class:`improto.web.flush.Turns` says which do).
_sending_now = False
#: While a broadcast runs, the clock its turn ends by: members' frames that
#: are not sent at once are held until then where the socket is idle
#: (:func:`improto.web.flush.hold`); None otherwise.
_holding: Any = None
#: True while a broadcast runs whose members' writes may skip Autobahn's
#: ``sendData`` (:func:`_quiet_writes`, asked once per broadcast, not per member).
_broadcast_quiet = False


def _quiet_writes() -> bool:
    """Whether an open connection's plain writes may skip Autobahn's ``sendData``."""
    return quiet.active and txaio.get_global_log_level() not in _DEBUG_LEVELS  # type: ignore[attr-defined]


class _SendQueue:
    """
    Autobahn's ``send_queue``: a deque that only sync or chopped writes use
    (improto itself makes none), which ``_connectionMade`` gives every
    connection, 0.75 KiB per idle connection. The empty one it assigns then
    is not kept: the attribute reads as an empty tuple until
    :meth:`LinkProtocol.sendData` makes a real queue for the first write
    that needs one (``LinkProtocol._queued``).
    """

    def __get__(self, link: Any, owner: Any = None) -> Any:
        if link is None:
            return self
        return link.__dict__.get("_send_queue", ())

    def __set__(self, link: Any, queue: Any) -> None:
        if queue or link._queued:
            link.__dict__["_send_queue"] = queue


class _ClosedWith:
    """
    Autobahn's ``is_closed`` once a connection is gone: a fired Deferred
    of the connection, as Autobahn's own would be, made when asked.

    Autobahn fires ``is_closed`` with the connection itself, so the
    connection and its Deferred would keep each other alive: a reference
    cycle that only the garbage collector frees, and with it everything
    the connection holds (about 20 objects per connection; under a flood
    of connections a collection of thousands of them each, 13-23 ms long,
    ``benchmarks/README.md``). :func:`_forget_is_closed` drops the
    connection's own reference once it is lost; whoever took the Deferred
    before still has it, and a later reader of ``is_closed`` gets this.
    """

    def __get__(self, link: Any, owner: Any = None) -> Any:
        if link is None:
            return self
        return succeed(link)


class _Utf8ValidatorWhenRead:
    """
    Autobahn's ``utf8validator``, made when first read (then kept in the
    connection's ``__dict__``): only a text message or a close reason
    reads it, and a connection that closes before either needs none.
    """

    def __get__(self, link: Any, owner: Any = None) -> Any:
        if link is None:
            return self
        validator = link.__dict__["utf8validator"] = Utf8Validator()
        return validator


#: What Autobahn's ``_connectionMade`` sets on every connection to a value
#: that is the same for all of them and reads only when a connection closes,
#: fails or pings, as class attributes of :class:`LinkProtocol` instead (see
#: :meth:`LinkProtocol._connectionMade`). What its frame and message paths
#: read stays on each connection: on Python 3.11 an instance attribute is
#: the cheaper read (as class attributes, 150.7k -> 153.6k instructions per
#: private message, ``micro.py --instructions --ops private``).
_INITIAL_STATE: dict[str, Any] = {
    "triggered": False, "closedByMe": False, "failedByMe": False, "droppedByMe": False, "wasClean": False,
    "wasNotCleanReason": None, "wasServerConnectionDropTimeout": False,
    "wasOpenHandshakeTimeout": False, "wasCloseHandshakeTimeout": False,
    "wasServingFlashSocketPolicyFile": False, "localCloseCode": None, "localCloseReason": None,
    "remoteCloseCode": None, "remoteCloseReason": None, "openHandshakeTimeoutCall": None,
    "closeHandshakeTimeoutCall": None, "autoPingTimeoutCall": None, "autoPingPending": None,
    "autoPingPendingCall": None, "autoPingPendingSeq": 0, "autoPingPendingSent": None,
}


def _forget_is_closed(link: Any) -> None:
    """Drop ``link``'s reference to its fired ``is_closed`` (see :class:`_ClosedWith`)."""
    closed = link.__dict__.get("is_closed")
    if closed is not None and closed.called:
        del link.__dict__["is_closed"]


class LinkProtocol(WebSocketServerProtocol):  # type: ignore[misc]
    """
    What every improto connection shares: being a router ``SessionLink``,
    and sharing one framed (and compressed) broadcast with its peers.
    """

    #: Chat frames are small and must not wait for Nagle's algorithm. Set on
    #: the class, not through the factory: Autobahn's ``connectionMade``
    #: calls ``setTcpNoDelay(self.tcpNoDelay)`` before ``_connectionMade``
    #: copies the factory's options, so only a protocol attribute reaches
    #: the socket, and then before the opening handshake's response.
    tcpNoDelay = True

    #: A TCP (or TLS) transport: producer registration and abortConnection.
    transport: Any
    #: Set by Autobahn's _connectionMade (from the factory's options).
    logOctets: bool
    openHandshakeTimeout: float
    _session: Session | None = None
    #: (window bits, mem level) when our frames are context-free deflate,
    #: so that one compressed frame may be shared; None when uncompressed.
    compression_key: tuple[int, int] | None = None
    #: Set while the kernel will not take more bytes for this client.
    _paused = False
    #: Bytes queued for this client since it stopped reading.
    _backlog = 0
    _dropping = False
    _counted = False
    #: Whether ``on`` added an event listener (improto adds none).
    _observed = False
    send_queue = _SendQueue()
    utf8validator = _Utf8ValidatorWhenRead()
    is_closed = _ClosedWith()
    _transport_details = details.LazyTransportDetails()
    #: The per-address and per-user connection slots this connection holds
    #: (``ChatServerFactory.admit`` and ``count_user``), given back when it
    #: is lost: two attributes rather than two callbacks on ``is_closed``
    #: (0.24 KiB per idle connection).
    address_slot: str | None = None
    user_slot: str | None = None
    #: Whether this connection has a real ``send_queue`` (it made a sync or chopped write).
    _queued = False
    #: Its request head as the connection's first read parsed it (``improto.web.upgrade``),
    #: until the handshake reads it.
    plain_request: handshake.PlainRequest | None = None

    def connectionMade(self) -> None:
        """Autobahn's, without the system calls it makes for nothing (:mod:`improto.web.details`)."""
        # Instance attributes, not the class defaults, for what every write
        # reads: on Python 3.11 an instance attribute is the cheaper read.
        self._paused = self._dropping = self._queued = False
        if quiet.active and txaio.get_global_log_level() not in _DEBUG_LEVELS:  # type: ignore[attr-defined]
            details.connection_made(self)
        else:
            super().connectionMade()

    def _connectionMade(self) -> None:
        """
        Autobahn's: ``WebSocketServerProtocol``'s and the
        ``WebSocketProtocol`` one it calls (both hash-pinned in
        ``tests/web/test_autobahn_quiet.py``), while :mod:`improto.web.quiet`
        is active and debug logging is off, without what they do for
        nothing: two ``log.debug`` calls and a list of (option, value,
        source) tuples built for one of them, a ``setTrackTimings`` call that
        changes nothing (it compares the option just copied), an empty send
        queue (:class:`_SendQueue` keeps none), a UTF-8 validator before
        anything reads one (:class:`_Utf8ValidatorWhenRead`), and 21
        attributes set to the same value on every connection and read only
        at a close, a failure or a ping, which are class attributes instead
        (:data:`_INITIAL_STATE`) until a connection changes them. The same
        state, in a smaller ``__dict__``. With :meth:`_connectionLost` and
        ``handshake._answer_plain``, 602k -> 517k instructions per
        connection (``benchmarks/micro.py --instructions --ops
        site-handshake``).
        """
        if not _quiet_writes():
            super()._connectionMade()
            return
        factory = self.factory
        for name in self.CONFIG_ATTRS:
            if not hasattr(self, name):
                setattr(self, name, getattr(factory, name))
        self.trafficStats = TrafficStats()
        self.state = _CONNECTING
        self.data = b""
        self._perMessageCompress = None
        self.trackedTimings = None  # type: ignore[assignment]  # Autobahn's own initial value
        self.send_state = _SEND_GROUND
        self.wasMaxFramePayloadSizeExceeded = self.wasMaxMessagePayloadSizeExceeded = False
        if self.openHandshakeTimeout > 0:
            self.openHandshakeTimeoutCall = factory._batched_timer.call_later(
                self.openHandshakeTimeout, self.onOpenHandshakeTimeout)
        factory.countConnections += 1  # WebSocketServerProtocol's part, after its log.debug call

    def _connectionLost(self, reason: Any) -> None:
        """
        ``WebSocketServerProtocol``'s (hash-pinned beside ``_connectionMade``'s)
        without its ``log.debug`` call, whose arguments it builds first.
        """
        if not _quiet_writes():
            super()._connectionLost(reason)
            return
        WebSocketProtocol._connectionLost(self, reason)
        self.factory.countConnections -= 1

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        try:
            super().connectionLost(reason)
        finally:
            if self.address_slot is not None or self.user_slot is not None:
                self.factory.give_back(self)
            # Autobahn leaves a close handshake's timer (after a close of
            # ours) armed when the connection is lost: it would hold the
            # connection for closeHandshakeTimeout seconds for nothing.
            timer = getattr(self, "closeHandshakeTimeoutCall", None)
            if timer is not None:
                timer.cancel()
                self.closeHandshakeTimeoutCall = None
            _forget_is_closed(self)

    def _onOpen(self) -> None:
        """
        Autobahn's: it completes a secure connection's details, then calls
        ``onOpen``. Details not made yet are a plain connection's
        (:mod:`improto.web.details`): not secure, nothing to complete.
        """
        if "_transport_details" in self.__dict__:
            super()._onOpen()
        else:
            self.onOpen()

    def processHandshake(self) -> None:
        """
        A plain request is read the short way (:mod:`improto.web.handshake`);
        anything else, and every request while Autobahn logs at debug level
        or :mod:`improto.web.quiet` is uninstalled, Autobahn's way.
        """
        request = self.plain_request
        if request is not None:
            del self.plain_request  # back to the class's None: nothing kept per connection
        if not (_quiet_writes() and handshake.open_plain(self, request)):
            super().processHandshake()

    def on(self, event: str, handler: Any) -> None:
        self._observed = True
        super().on(event, handler)

    def fire(self, event: str, *args: Any, **kwargs: Any) -> Any:
        """
        Autobahn fires a "message" event for every message received, even
        with no listener: a Deferred made and fired, then an errback added
        (``benchmarks/micro.py``). With no listener ever added (by
        :meth:`on`, the only way to add one), the result is the same
        already-fired one; otherwise (and while :mod:`improto.web.quiet` is
        uninstalled, for the benchmarks' "stock") this is Autobahn's ``fire``.
        """
        if self._observed or not quiet.active:
            return super().fire(event, *args, **kwargs)
        return _NO_LISTENERS

    def onOpen(self) -> None:
        self._counted = True
        self.factory.router.metrics.connection_opened()
        pmce = self._perMessageCompress
        if isinstance(pmce, PerMessageDeflate) and pmce.server_no_context_takeover:
            self.compression_key = (pmce.server_max_window_bits, pmce.mem_level)
            # Before the first message out (the welcome): see framing.
            self._perMessageCompress = ContextFreeDeflate.replacing(pmce)
        # Autobahn keeps the handshake's request and response texts (for its
        # debug log only): 0.4-1.5 KiB per idle connection, read by nothing after this.
        self.http_request_data = self.http_response_data = None  # type: ignore[assignment]
        self._watch_backpressure()
        self._session = self.open_session(self.factory.router)

    def _watch_backpressure(self) -> None:
        """
        Become the transport's producer, so that Twisted tells us when a
        client stops reading. Without this a client that never reads makes
        the server buffer every broadcast for it, without bound.
        """
        transport = self.transport
        if transport is None or not hasattr(transport, "registerProducer"):
            return
        # twisted.web's HTTPChannel is still registered from the upgrade.
        transport.unregisterProducer()
        transport.registerProducer(self, True)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._backlog = 0

    def stopProducing(self) -> None:
        self._paused = False

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """
        The one Autobahn write method improto overrides. Everything written,
        handshake and close included, counts towards the backlog.

        An unqueued write on an open connection is Autobahn's own
        ``sendData`` minus its ``log.debug`` call (whose arguments cost
        more than the write: ``benchmarks/micro.py``), as a broadcast
        writes one frame per member; anything else, and everything while
        debug logging is on, is Autobahn's. The source it re-states is
        hash-pinned in ``tests/web/test_autobahn_quiet.py``. A broadcast's
        frame that does not go at once is held until the reactor's turn
        ends where the socket is idle (:func:`improto.web.flush.hold`);
        any other write first releases what is held for this connection.

        The handshake's answer is buffered as Twisted does, not sent at
        once like an idle member's broadcast: sent at once, each answer
        woke the client's CPU on its own (about one cross-CPU wake-up more
        per connection), which cost more handshakes a second than the two
        ``epoll_ctl`` calls it saved (``benchmarks/README.md``).
        """
        if self._dropping:
            return
        if self._paused:
            self._backlog += len(data)
            if self._backlog > self.factory.options.max_backlog:
                self._drop_slow_consumer()
                return
        if (sync or chopsize) and not self._queued:
            self._queued = True
            self.send_queue = deque()
        if (
            sync
            or chopsize
            or self._queued
            or self.logOctets
            or self.state != _OPEN
            # _quiet_writes(), spelled out: a call more per frame shows in the private path.
            or not (_broadcast_quiet or (
                quiet.active and txaio.get_global_log_level() not in _DEBUG_LEVELS))  # type: ignore[attr-defined]
        ):
            if flush.held:
                flush.release(self.transport)
            super().sendData(data, sync, chopsize)
            return
        transport = self.transport
        if _sending_now:
            flush.write_now(transport, data)
        elif _holding is None or not flush.hold(transport, data, _holding):
            if flush.held:
                flush.release(transport)
            transport.write(data)
        self.trafficStats.outgoingOctetsWireLevel += len(data)

    def dataReceived(self, data: bytes) -> None:
        """
        Autobahn's ``dataReceived`` (of ``WebSocketAdapterProtocol``) is a
        ``log.debug`` call and ``self._dataReceived(data)``; the call's
        arguments (``hltype`` and two ``hlval``) are built on every read even
        with nothing logged. While :mod:`improto.web.quiet` is active and debug
        logging is off this is the second line alone; otherwise Autobahn's.
        Its source is hash-pinned in ``tests/web/test_autobahn_quiet.py``.
        """
        if quiet.active and txaio.get_global_log_level() not in _DEBUG_LEVELS:  # type: ignore[attr-defined]  # _quiet_writes(), spelled out
            if self._observed or not reading.can_read_whole_frames(self):
                self._dataReceived(data)
                return
            # What _dataReceived does, with the whole simple frames read first.
            self.trafficStats.incomingOctetsWireLevel += len(data)
            taken = reading.read_whole_frames(self, data)
            if taken < len(data):
                self.data = data[taken:]  # empty before: can_read_whole_frames
                self.consumeData()
            return
        super().dataReceived(data)

    def _drop_slow_consumer(self) -> None:
        if self._dropping:
            return
        self._dropping = True
        self.factory.router.metrics.slow_consumer_dropped()
        _log.warn(
            "Dropping {peer}: it stopped reading and {backlog} bytes are waiting for it",
            peer=self.peer,
            backlog=self._backlog,
        )
        self.transport.abortConnection()

    def open_session(self, router: Router) -> Session | None:
        raise NotImplementedError

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._counted:
            self._counted = False
            self.factory.router.metrics.connection_closed()
        if self._session is not None:
            self.factory.router.disconnect(self._session)
            self._session = None

    def sendCloseFrame(self, code: int | None = None, reasonUtf8: bytes | None = None,
                       isReply: bool = False) -> None:
        if not isReply and self.state == _OPEN:  # counts Autobahn's 1002/1007/1009 too
            self.factory.router.metrics.close_sent(code or 1005)
        super().sendCloseFrame(code, reasonUtf8, isReply)

    def send_frame(self, data: bytes, binary: bool) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendMessage(data, binary)

    def close(self, code: int, reason: str) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            # sendClose() only lets applications use 1000 and 3000-4999;
            # the server needs 1001 (going away) and 1008 (policy).
            self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123), isReply=False)

    @classmethod
    def broadcast(cls, links: Sequence[Any], data: bytes, binary: bool) -> None:
        """
        Frame ``data`` once for all uncompressed links (Autobahn's
        ``prepareMessage``; links that compress with context get it
        compressed per link by ``sendPreparedMessage``), and compress and
        frame it once per context-free compression setting (see
        :mod:`improto.web.framing` for why that one is ours).
        """
        global _sending_now, _broadcast_quiet, _holding
        turns = getattr(links[0].factory, "turns", None) if links else None
        _sending_now = turns is not None and turns.direct(len(links))
        _holding = None if turns is None else turns.clock
        _broadcast_quiet = _quiet_writes()
        try:
            cls._broadcast(links, data, binary)
        finally:
            _sending_now = _broadcast_quiet = False
            _holding = None

    @staticmethod
    def _broadcast(links: Sequence[Any], data: bytes, binary: bool) -> None:
        prepared: Any = None
        compressed: dict[tuple[int, int], bytes] = {}
        for link in links:
            if link.state != WebSocketServerProtocol.STATE_OPEN:
                continue
            key = link.compression_key
            if key is None:
                if prepared is None:
                    prepared = link.factory.prepareMessage(data, binary)
                if link._perMessageCompress is None:
                    # sendPreparedMessage's own branch for an uncompressed link
                    # (hash-pinned in tests/web/test_autobahn_quiet.py), one call fewer a member.
                    link.sendData(prepared.payloadHybi)
                else:
                    link.sendPreparedMessage(prepared)
                continue
            wire = compressed.get(key)
            if wire is None:
                wire = compressed[key] = compressed_frame(deflate(data, *key), binary)
            link.sendData(wire)


for _name, _value in _INITIAL_STATE.items():
    setattr(LinkProtocol, _name, _value)
