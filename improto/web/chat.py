"""
Chat and echo connections: ``/ws/<nickname>``, ``/<nickname>`` and ``/echo``.

The handshake is first admitted (the page's origin, connections per peer
address: refused with HTTP 403 / 429), then names the user (the last path
segment, or in token mode a verified JWT, see :mod:`improto.auth`; a bad
name is closed with 1008, a refused token with HTTP 401/403 or 4401/4403, a
nickname over its connection limit with 4029) and picks the dialect (the ``improto.v1`` subprotocol
selects native); it completes only once the router has subscribed what
the connection needs.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from improto.auth import AuthRefusal
from improto.protocol import codec
from improto.protocol.codec import ProtocolError
from improto.router import Router, Session, Ticket
from improto.router.settled import PENDING, result_of
from improto.settings import Settings
from improto.web import flush
from improto.web.framing import accept_as_offered, accept_shareable
from improto.web.limits import ConnectionCounter, OncePerKey, http_response, peer_host
from improto.web.link import LinkProtocol
from improto.web.origins import OriginPolicy
from improto.web.timers import BucketTimer

_log = Logger()

#: Close code for a refused nickname (RFC 6455 "policy violation").
CLOSE_POLICY = 1008
#: Close code for a nickname that has too many connections on this node
#: (an application code: 4000 + HTTP's 429 Too Many Requests).
CLOSE_TOO_MANY = 4029
#: The echo route must take the conformance suite's 16 MiB messages.
ECHO_MAX_MESSAGE_SIZE = 16 * 1024 * 1024 + 1024


class Refused(ConnectionDeny):
    """
    A handshake this server refuses with an HTTP status: the client reads
    ``status`` and a one-line text body. Raised from ``onConnect``.
    """

    def __init__(self, status: int, phrase: str, body: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(status, body)
        self.response = http_response(status, phrase, body, headers)


class ChatServerProtocol(LinkProtocol):
    """One client connection on a chat route or the echo route."""

    factory: ChatServerFactory
    _refusal: ProtocolError | None = None
    #: (close code, reason) to close with right after the handshake.
    _close_at_open: tuple[int, str] | None = None
    _refused: Refused | None = None
    _allowed_groups: frozenset[str] | None = None
    _nickname: str = ""
    _native: bool = False
    _echo: bool = False
    _ticket: Ticket | None = None
    _resume: str | None = None

    def onConnect(  # type: ignore[override]  # Autobahn also accepts a Deferred
        self, request: ConnectionRequest
    ) -> Deferred[str | None] | str | None:
        self._admit(request)
        if request.path == self.factory.options.echo_path:
            return self._open_echo()
        subprotocol = self._choose_dialect(request)
        if not self._name_user(request) or not self._count_user():
            # Complete the handshake (with the subprotocol: browsers fail a
            # handshake that drops it) so the client can read why it is refused.
            return subprotocol
        self._resume = ",".join(request.params.get("resume", [])) or None
        # The handshake completes only once this client is reachable (at
        # once when it already is: Autobahn takes a plain answer too).
        return self._when_prepared(self.factory.router.prepare(self._nickname), subprotocol)

    # -- the steps of onConnect -------------------------------------------------

    def _admit(self, request: ConnectionRequest) -> None:
        """Origin (403) and connections per address (429), before any work."""
        try:
            self.factory.admit(self, request)
        except Refused as e:
            self._refused = e
            raise

    def _open_echo(self) -> Deferred[str | None] | str | None:
        self._echo = True
        router = self.factory.router
        self.maxMessagePayloadSize = max(router.limits.max_message_size, ECHO_MAX_MESSAGE_SIZE)
        self.perMessageCompressionAccept = accept_as_offered(self.maxMessagePayloadSize)
        return self._when_prepared(router.prepare(None), None)

    def _choose_dialect(self, request: ConnectionRequest) -> str | None:
        """The frame limits of a chat route, and the subprotocol to answer."""
        # Room for a frame a little over the limit, so the client gets a
        # readable too_large error instead of a dropped connection.
        self.maxMessagePayloadSize = self.factory.router.limits.max_frame_size
        extensions = request.headers.get("sec-websocket-extensions")
        if extensions is not None:
            # Without the header the factory's (the same, for no header) stays:
            # Autobahn asks it only about offers, and there are none.
            self.perMessageCompressionAccept = accept_shareable(self.maxMessagePayloadSize, extensions)
        if codec.NATIVE_SUBPROTOCOL in request.protocols:
            self._native = True
            return codec.NATIVE_SUBPROTOCOL
        return None

    def _name_user(self, request: ConnectionRequest) -> bool:
        """
        Who this is: the nickname in the path (open mode) or a verified token's
        ``sub``. False when refused: a bad nickname is closed with 1008; a
        refused token is HTTP 401/403, or 4401/4403 for a native client, which
        (in a browser) cannot read a handshake's status (docs/auth.md).
        """
        try:
            identity = self.factory.options.authenticator.identify(request)
        except AuthRefusal as refusal:
            self.factory.router.metrics.refused("auth")
            if not self._native:
                raise refusal.http_denial() from None
            self._close_at_open = (refusal.close_code, refusal.reason)
            return False
        except ProtocolError as e:
            self.factory.router.metrics.refused("bad_name")
            # Without its traceback, whose frames hold this connection: kept,
            # it would make the connection a reference cycle.
            self._refusal = e.with_traceback(None)
            return False
        self._nickname, self._allowed_groups = identity.user, identity.groups
        return True

    def _count_user(self) -> bool:
        """Connections per nickname on this node; False (closed with 4029) if full."""
        reason = self.factory.count_user(self, self._nickname)
        if reason is not None:
            self._close_at_open = (CLOSE_TOO_MANY, reason)
            return False
        return True

    def _when_prepared(
        self, prepared: Deferred[Ticket], subprotocol: str | None
    ) -> Deferred[str | None] | str | None:
        ticket = result_of(prepared)
        if ticket is PENDING:
            return prepared.addCallback(self._prepared, subprotocol)
        return self._prepared(ticket, subprotocol)

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
            router.metrics.error_sent(self._refusal.code.value)
            self.send_frame(codec.error(self._refusal, self._native), False)
            self.close(CLOSE_POLICY, self._refusal.reason)
            return None
        if self._close_at_open is not None:
            self.close(*self._close_at_open)
            return None
        return router.connect(self, self._nickname, native=self._native, ticket=ticket,
                              allowed_groups=self._allowed_groups, resume=self._resume)

    def failHandshake(
        self, reason: str, code: int = 400, responseHeaders: Any = None
    ) -> None:
        refused, self._refused = self._refused, None
        if refused is None:
            super().failHandshake(reason, code, responseHeaders)
            return
        # Autobahn's own would log every attempt and send no body; the
        # factory has logged this refusal once.
        self.wasNotCleanReason = reason
        self.sendData(refused.response)
        self.dropConnection(abort=False)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self._session
        if session is None:
            return
        if isBinary:
            self.factory.router.receive_binary(session, payload)
        else:
            # Autobahn has already failed the connection (1007) for bad UTF-8.
            self.factory.router.receive_text(session, payload.decode("utf-8"), len(payload))


class ChatServerFactory(WebSocketServerFactory):
    """
    Builds chat (and echo) connections, and holds what they share: the
    origin policy and the per-address and per-user connection counts.
    """

    protocol: type[LinkProtocol] = ChatServerProtocol
    #: Whether something has set ``TCP_NODELAY`` on its connections' sockets
    #: before they reach the protocol, as twisted.web's ``HTTPChannel`` does
    #: (``improto.web.resources.served_by_twisted_web`` sets it): if not,
    #: the protocol sets it, as Autobahn does (:mod:`improto.web.details`).
    no_delay_set = False
    #: ``protocol`` with this factory's options as class attributes (see
    #: :meth:`buildProtocol`); made again when the options or ``protocol`` change.
    _configured: type[LinkProtocol] | None = None

    def __init__(self, router: Router, options: Settings, reactor: Any) -> None:
        super().__init__(reactor=reactor)
        # Autobahn's per-connection timers (handshake, pings, close), O(1) to cancel.
        self._batched_timer = BucketTimer(reactor)
        self.router = router
        self.options = options
        #: Which broadcasts send at once (fan-out latency).
        self.turns = flush.Turns(reactor)
        self.origins = OriginPolicy(options.allowed_origins)
        self.per_address = ConnectionCounter(options.max_connections_per_ip)
        self.per_user = ConnectionCounter(options.max_connections_per_user)
        self._logged = OncePerKey()
        self.setProtocolOptions(
            # improto.web.origins checks origins (in admit), not Autobahn.
            # (Every call resets allowNullOrigin: set everything in one.)
            allowedOrigins=["*"],
            allowNullOrigin=True,
            maxMessagePayloadSize=router.limits.max_frame_size,
            maxFramePayloadSize=0,
            # Send a close frame with the reason code (1002, 1007, 1009) on
            # protocol violations instead of just dropping the TCP connection.
            failByDrop=False,
            openHandshakeTimeout=options.handshake_timeout,
            closeHandshakeTimeout=3,
            autoPingInterval=options.ping_interval,
            autoPingTimeout=options.ping_interval * 2 if options.ping_interval else 0,
            perMessageCompressionAccept=accept_shareable(router.limits.max_frame_size),
        )

    def setProtocolOptions(self, **options: Any) -> None:  # type: ignore[override]
        super().setProtocolOptions(**options)
        self._configured = None

    def buildProtocol(self, addr: Any) -> LinkProtocol:
        """
        Autobahn's ``_connectionMade`` copies the factory's 28 protocol
        options into every connection's ``__dict__`` (unless the protocol
        has them already). That copying is 28 ``setattr`` calls per
        handshake, and it takes an open connection's attribute dict past
        85 keys into the next size, about 1.7 KiB more per idle
        connection. Here the options no frame reads are class attributes
        of a subclass made once per set of options (:func:`with_options`):
        Autobahn finds them and copies only the others, and a connection
        still keeps the options it opened with. Change options with
        :meth:`setProtocolOptions` (Autobahn's API), which makes the next
        subclass; an option assigned straight onto the factory is not seen.
        """
        configured = self._configured
        if configured is None or configured.__base__ is not self.protocol:
            configured = self._configured = with_options(self.protocol, self)
        link = configured()
        link.factory = self
        return link

    def admit(self, link: LinkProtocol, request: ConnectionRequest) -> None:
        """
        Let a handshake proceed, or raise :class:`Refused`: 403 for an
        origin the policy refuses, 429 past ``max_connections_per_ip``.
        An admitted connection is counted until it closes, however it closes.
        """
        origin = request.headers.get("origin")
        if not self.origins.allows(origin, request.headers.get("host")):
            self.router.metrics.refused("origin")
            if self._logged.first(("origin", origin)):
                _log.info(
                    "Refused WebSockets from origin {origin!r}: neither this server's own "
                    "origin nor allowed by --allowed-origins (logged once per origin)",
                    origin=origin,
                )
            raise Refused(403, "Forbidden", f"The origin {str(origin)[:100]} may not "
                          "open WebSockets here (see --allowed-origins).")
        address = peer_host(link.transport)
        if not self.per_address.acquire(address):
            self.router.metrics.refused("per_ip")
            if self._logged.first(("address", address)):
                _log.warn(
                    "Refused WebSockets from {address}: it has {limit} open "
                    "(--max-connections-per-ip; logged once per address)",
                    address=address, limit=self.per_address.limit,
                )
            raise Refused(
                429, "Too Many Requests",
                f"Too many WebSocket connections from {address} (at most "
                f"{self.per_address.limit}).",
                (("Retry-After", "10"),),
            )
        link.address_slot = address

    def count_user(self, link: LinkProtocol, nickname: str) -> str | None:
        """Count a chat connection of ``nickname``; the refusal's reason if full."""
        if not self.per_user.acquire(nickname):
            self.router.metrics.refused("per_user")
            if self._logged.first(("user", nickname)):
                _log.info(
                    "Refused a connection of {user!r}: it has {limit} open on this node "
                    "(--max-connections-per-user; logged once per user)",
                    user=nickname, limit=self.per_user.limit,
                )
            return f"Too many connections for this user (at most {self.per_user.limit})."
        link.user_slot = nickname
        return None

    def give_back(self, link: LinkProtocol) -> None:
        """Release the slots :meth:`admit` and :meth:`count_user` gave ``link``."""
        if link.address_slot is not None:
            self.per_address.release(link.address_slot)
            link.address_slot = None
        if link.user_slot is not None:
            self.per_user.release(link.user_slot)
            link.user_slot = None


#: The options Autobahn reads on every frame in or out (its ``processData``,
#: ``onFrame*``, ``sendFrame``, ``sendMessage``, ``sendData``): still copied into
#: each connection, because on Python 3.11 reading a class attribute through an
#: instance costs about 40 instructions more than an instance attribute
#: (``benchmarks/micro.py --instructions``, ``group-100``). Ten keys fit.
PER_FRAME_OPTIONS = frozenset((
    "logOctets", "logFrames", "applyMask", "maskServerFrames", "requireMaskedClientFrames",
    "utf8validateIncoming", "maxFramePayloadSize", "maxMessagePayloadSize",
    "autoPingRestartOnAnyTraffic", "autoFragmentSize",
))


def with_options(protocol: type[LinkProtocol], factory: Any) -> type[LinkProtocol]:
    """
    A subclass of ``protocol``, named like it, whose class attributes are
    ``factory``'s current values of the options Autobahn would copy into
    each connection (``CONFIG_ATTRS``), except the :data:`PER_FRAME_OPTIONS`,
    which Autobahn still copies (its ``CONFIG_ATTRS`` here lists only
    those); options ``protocol`` sets itself stay its own, as with
    Autobahn's copying.
    """
    options: dict[str, Any] = {}
    for name in protocol.CONFIG_ATTRS:
        if name in PER_FRAME_OPTIONS or hasattr(protocol, name):
            continue
        value = getattr(factory, name)
        # A function (perMessageCompressionAccept) must not become a method.
        options[name] = staticmethod(value) if hasattr(type(value), "__get__") else value
    namespace = {"__module__": protocol.__module__, "__qualname__": protocol.__qualname__,
                 "__doc__": protocol.__doc__, **options,
                 # What _connectionMade still looks at, per connection: the rest are here.
                 "CONFIG_ATTRS": [n for n in protocol.CONFIG_ATTRS if n in PER_FRAME_OPTIONS]}
    return type(protocol.__name__, (protocol,), namespace)
