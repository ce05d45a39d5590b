"""
The WebSocket layer: the only module that knows Autobahn.

It turns connections into router sessions, frames into router calls, and
router deliveries into frames. A group broadcast is framed once per
compression setting and the same bytes are written to every member.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.util import encode_truncate
from autobahn.websocket.compress import (
    PerMessageDeflate,
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from improto import codec
from improto._autobahn_quiet import QuietLoggingMixin
from improto.codec import ErrorCode, ProtocolError
from improto.router import Router, Session, Ticket
from improto.settings import Settings

_log = Logger()

#: Close code for a refused nickname (RFC 6455 "policy violation").
CLOSE_POLICY = 1008
#: The echo route must take the conformance suite's 16 MiB messages.
ECHO_MAX_MESSAGE_SIZE = 16 * 1024 * 1024 + 1024


def frame(payload: bytes, binary: bool, compressed: bool = False) -> bytes:
    """One unmasked, unfragmented server frame (RFC 6455 section 5.2)."""
    first = 0x80 | (0x40 if compressed else 0) | (0x2 if binary else 0x1)
    length = len(payload)
    if length < 126:
        header = bytes((first, length))
    elif length < 0x10000:
        header = bytes((first, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((first, 127)) + length.to_bytes(8, "big")
    return header + payload


def deflate(payload: bytes, window_bits: int, mem_level: int) -> bytes:
    """Compress a whole message without context, as RFC 7692 section 7.2.1."""
    compressor = zlib.compressobj(
        zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -window_bits, mem_level
    )
    return (compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def parse_chat_path(path: str) -> str:
    """
    The nickname in ``/ws/<nick>`` or ``/<nick>``, percent-decoded: the
    last path segment, so the route also works mounted under a prefix.

    Raises :class:`ProtocolError` for a path that names nobody acceptable.
    """
    raw = path.rsplit("/", 1)[-1]
    try:
        nickname = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.BAD_NAME, "The nickname is not valid UTF-8.") from None
    return codec.check_name(nickname)


class LinkProtocol(QuietLoggingMixin, WebSocketServerProtocol):  # type: ignore[misc]
    """
    What every improto connection shares: being a router ``SessionLink``,
    and sharing one framed (and compressed) broadcast with its peers.
    """

    _session: Session | None = None
    #: (window bits, mem level) when our frames are context-free deflate,
    #: so that one compressed frame may be shared; None when uncompressed.
    compression_key: tuple[int, int] | None = None
    #: True when deflate keeps context: every frame is compressed per link.
    _per_connection_compression = False
    #: Set while the kernel will not take more bytes for this client.
    _paused = False
    #: Bytes queued for this client since it stopped reading.
    _backlog = 0
    _dropping = False

    def onOpen(self) -> None:
        # Autobahn reads its tcpNoDelay setting before copying it from the
        # factory, so server sockets never get it; chat frames are small and
        # must not wait for Nagle's algorithm.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        pmce = self._perMessageCompress
        if isinstance(pmce, PerMessageDeflate) and pmce.server_no_context_takeover:
            self.compression_key = (pmce.server_max_window_bits, pmce.mem_level)
        elif pmce is not None:
            self._per_connection_compression = True
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
        if self._dropping:
            return
        if self._paused:
            self._backlog += len(data)
            if self._backlog > self.factory.options.max_backlog:
                self._drop_slow_consumer()
                return
        super().sendData(data, sync, chopsize)

    def _drop_slow_consumer(self) -> None:
        if self._dropping:
            return
        self._dropping = True
        _log.warn(
            "Dropping {peer}: it stopped reading and {backlog} bytes are waiting for it",
            peer=self.peer,
            backlog=self._backlog,
        )
        self.transport.abortConnection()

    def open_session(self, router: Router) -> Session | None:
        raise NotImplementedError

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._session is not None:
            self.factory.router.disconnect(self._session)
            self._session = None

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
        """Frame (and compress) ``data`` once per compression setting."""
        framed: dict[tuple[int, int] | None, bytes] = {}
        for link in links:
            if link.state != WebSocketServerProtocol.STATE_OPEN:
                continue
            if link._per_connection_compression:
                link.sendMessage(data, binary)
                continue
            key = link.compression_key
            wire = framed.get(key)
            if wire is None:
                if key is None:
                    wire = frame(data, binary)
                else:
                    wire = frame(deflate(data, *key), binary, compressed=True)
                framed[key] = wire
            link.sendData(wire)


class ChatServerProtocol(LinkProtocol):
    """One client connection on a chat route or the echo route."""

    factory: ChatServerFactory
    _refusal: ProtocolError | None = None
    _nickname: str = ""
    _native: bool = False
    _echo: bool = False
    _ticket: Ticket | None = None

    def onConnect(  # type: ignore[override]  # Autobahn also accepts a Deferred
        self, request: ConnectionRequest
    ) -> Deferred[str | None] | str | None:
        options = self.factory.options
        router = self.factory.router
        if request.path == options.echo_path:
            self._echo = True
            self.maxMessagePayloadSize = max(options.max_message_size, ECHO_MAX_MESSAGE_SIZE)
            self.perMessageCompressionAccept = _accept_as_offered(self.maxMessagePayloadSize)
            return router.prepare(None).addCallback(self._prepared, None)
        # Room for a frame a little over the limit, so the client gets a
        # readable too_large error instead of a dropped connection.
        self.maxMessagePayloadSize = options.max_message_size * 4
        self.perMessageCompressionAccept = _accept_shareable(self.maxMessagePayloadSize)
        subprotocol = None
        if codec.NATIVE_SUBPROTOCOL in request.protocols:
            self._native = True
            subprotocol = codec.NATIVE_SUBPROTOCOL
        try:
            self._nickname = parse_chat_path(request.path)
        except ProtocolError as e:
            # Complete the handshake (with the subprotocol: browsers fail a
            # handshake that drops it) so the client can read why it is refused.
            self._refusal = e
            return subprotocol
        # The handshake completes only once this client is reachable.
        return router.prepare(self._nickname).addCallback(self._prepared, subprotocol)

    def _prepared(self, ticket: Ticket, subprotocol: str | None) -> str | None:
        self._ticket = ticket
        return subprotocol

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._ticket is not None:
            self.factory.router.cancel(self._ticket)
            self._ticket = None
        super().onClose(wasClean, code, reason)

    def open_session(self, router: Router) -> Session | None:
        ticket, self._ticket = self._ticket, None
        if self._echo:
            return router.connect_echo(self, ticket)
        if self._refusal is not None:
            _log.info("Refused connection from {peer}: {reason}", peer=self.peer,
                      reason=self._refusal.reason)
            self.send_frame(codec.error(self._refusal, self._native), False)
            self.close(CLOSE_POLICY, self._refusal.reason)
            return None
        return router.connect(self, self._nickname, native=self._native, ticket=ticket)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self._session
        if session is None:
            return
        if isBinary:
            self.factory.router.receive_binary(session, payload)
        else:
            # Autobahn has already failed the connection (1007) for bad UTF-8.
            self.factory.router.receive_text(session, payload.decode("utf-8"), len(payload))


#: ``on_text(text, reply)`` of a feed: ``reply`` answers the sender alone.
FeedHandler = Callable[[str, Callable[[Any], None]], None]


class FeedServerProtocol(LinkProtocol):
    """
    A connection to a live feed: it receives whatever server-side code
    publishes to the feed's group, and its text frames go to a handler.
    """

    factory: FeedServerFactory

    def onConnect(self, request: ConnectionRequest) -> None:
        self.maxMessagePayloadSize = self.factory.options.max_message_size
        self.perMessageCompressionAccept = _accept_shareable(self.maxMessagePayloadSize)

    def open_session(self, router: Router) -> Session | None:
        return router.connect_listener(self, self.factory.group)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            error = ProtocolError(ErrorCode.BINARY_NOT_SUPPORTED, "This feed takes text frames only.")
            self.send_frame(codec.error(error, native=True), False)
            return
        self.factory.on_text(payload.decode("utf-8"), self._reply)

    def _reply(self, payload: Any) -> None:
        if isinstance(payload, (bytes, str)):
            data = payload.encode("utf-8") if isinstance(payload, str) else payload
        else:
            data = codec.encode(payload)
        self.send_frame(data, False)


class _ContextFreeAccept(PerMessageDeflateOfferAccept):
    """Says ``server_no_context_takeover`` even when the client did not ask
    (RFC 7692 section 7.1.1.1 allows it), so the promise is on the wire."""

    def get_extension_string(self) -> str:
        text: str = super().get_extension_string()
        if "server_no_context_takeover" not in text:
            text += "; server_no_context_takeover"
        return text


def _accept_shareable(max_message_size: int) -> Callable[[list[Any]], Any]:
    """
    Accept permessage-deflate, insisting on server_no_context_takeover:
    each frame we send is then compressed on its own, so one compressed
    broadcast frame is valid on every connection with the same settings.
    """

    def accept(offers: list[Any]) -> PerMessageDeflateOfferAccept | None:
        for offer in offers:
            if isinstance(offer, PerMessageDeflateOffer):
                return _ContextFreeAccept(
                    offer, no_context_takeover=True, max_message_size=max_message_size
                )
        return None

    return accept


def _accept_as_offered(max_message_size: int) -> Callable[[list[Any]], Any]:
    def accept(offers: list[Any]) -> PerMessageDeflateOfferAccept | None:
        for offer in offers:
            if isinstance(offer, PerMessageDeflateOffer):
                return PerMessageDeflateOfferAccept(offer, max_message_size=max_message_size)
        return None

    return accept


class ChatServerFactory(WebSocketServerFactory):
    protocol: type[LinkProtocol] = ChatServerProtocol

    def __init__(self, router: Router, options: Settings, reactor: Any) -> None:
        super().__init__(reactor=reactor)
        self.router = router
        self.options = options
        self.setProtocolOptions(
            allowedOrigins=list(options.allowed_origins),
            maxMessagePayloadSize=options.max_message_size * 4,
            maxFramePayloadSize=0,
            # Send a close frame with the reason code (1002, 1007, 1009) on
            # protocol violations instead of just dropping the TCP connection.
            failByDrop=False,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=3,
            autoPingInterval=options.ping_interval,
            autoPingTimeout=options.ping_interval * 2 if options.ping_interval else 0,
        )
        self.setProtocolOptions(perMessageCompressionAccept=_accept_shareable(
            options.max_message_size * 4))


class FeedServerFactory(ChatServerFactory):
    protocol: type[LinkProtocol] = FeedServerProtocol

    def __init__(
        self, router: Router, group: str, on_text: FeedHandler, options: Settings, reactor: Any
    ) -> None:
        super().__init__(router, options, reactor)
        self.group = group
        self.on_text = on_text
