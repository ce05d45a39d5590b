"""
Chat and echo connections: ``/ws/<nickname>``, ``/<nickname>`` and ``/echo``.

The handshake names the user (the last path segment, or in token mode a
verified JWT: see :mod:`improto.auth`) and picks the
dialect (the ``improto.v1`` subprotocol selects native); it completes only
once the router has subscribed what the connection needs.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from improto.auth import AuthRefusal
from improto.protocol import codec
from improto.protocol.codec import ProtocolError
from improto.router import Router, Session, Ticket
from improto.settings import Settings
from improto.web.framing import accept_as_offered, accept_shareable
from improto.web.link import LinkProtocol

_log = Logger()

#: Close code for a refused nickname (RFC 6455 "policy violation").
CLOSE_POLICY = 1008
#: The echo route must take the conformance suite's 16 MiB messages.
ECHO_MAX_MESSAGE_SIZE = 16 * 1024 * 1024 + 1024


class ChatServerProtocol(LinkProtocol):
    """One client connection on a chat route or the echo route."""

    factory: ChatServerFactory
    _refusal: ProtocolError | None = None
    _auth_refusal: AuthRefusal | None = None
    _allowed_groups: frozenset[str] | None = None
    _nickname: str = ""
    _native: bool = False
    _echo: bool = False
    _ticket: Ticket | None = None
    _resume: str | None = None

    def onConnect(  # type: ignore[override]  # Autobahn also accepts a Deferred
        self, request: ConnectionRequest
    ) -> Deferred[str | None] | str | None:
        options = self.factory.options
        router = self.factory.router
        if request.path == options.echo_path:
            self._echo = True
            self.maxMessagePayloadSize = max(router.limits.max_message_size, ECHO_MAX_MESSAGE_SIZE)
            self.perMessageCompressionAccept = accept_as_offered(self.maxMessagePayloadSize)
            return router.prepare(None).addCallback(self._prepared, None)
        # Room for a frame a little over the limit, so the client gets a
        # readable too_large error instead of a dropped connection.
        self.maxMessagePayloadSize = router.limits.max_message_size * 4
        self.perMessageCompressionAccept = accept_shareable(self.maxMessagePayloadSize)
        subprotocol = None
        if codec.NATIVE_SUBPROTOCOL in request.protocols:
            self._native = True
            subprotocol = codec.NATIVE_SUBPROTOCOL
        try:
            identity = options.authenticator.identify(request)
        except AuthRefusal as refusal:  # docs/auth.md: 401/403, or 101 then 4401/4403
            if subprotocol is None:
                raise refusal.http_denial() from None
            self._auth_refusal = refusal
            return subprotocol
        except ProtocolError as e:
            # Complete the handshake (with the subprotocol: browsers fail a
            # handshake that drops it) so the client can read why it is refused.
            self._refusal = e
            return subprotocol
        self._nickname, self._allowed_groups = identity.user, identity.groups
        self._resume = ",".join(request.params.get("resume", [])) or None
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
        if self._auth_refusal is not None:
            self.close(self._auth_refusal.close_code, self._auth_refusal.reason)
            return None
        if self._refusal is not None:
            _log.info("Refused connection from {peer}: {reason}", peer=self.peer,
                      reason=self._refusal.reason)
            self.send_frame(codec.error(self._refusal, self._native), False)
            self.close(CLOSE_POLICY, self._refusal.reason)
            return None
        return router.connect(self, self._nickname, native=self._native, ticket=ticket,
                              allowed_groups=self._allowed_groups, resume=self._resume)

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


class ChatServerFactory(WebSocketServerFactory):
    protocol: type[LinkProtocol] = ChatServerProtocol

    def __init__(self, router: Router, options: Settings, reactor: Any) -> None:
        super().__init__(reactor=reactor)
        self.router = router
        self.options = options
        self.setProtocolOptions(
            allowedOrigins=list(options.allowed_origins),
            maxMessagePayloadSize=router.limits.max_message_size * 4,
            maxFramePayloadSize=0,
            # Send a close frame with the reason code (1002, 1007, 1009) on
            # protocol violations instead of just dropping the TCP connection.
            failByDrop=False,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=3,
            autoPingInterval=options.ping_interval,
            autoPingTimeout=options.ping_interval * 2 if options.ping_interval else 0,
        )
        self.setProtocolOptions(perMessageCompressionAccept=accept_shareable(
            router.limits.max_message_size * 4))
