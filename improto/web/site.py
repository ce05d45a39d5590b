"""
The HTTP server in front of the WebSocket routes, hardened for the public
internet: every socket is closed when its request does not arrive in time
(half-open and slowloris sockets), request heads are bounded, one address
may hold only so many connections that are not WebSockets, and every
response carries the browser security headers.

Refusals are precise statuses with a one-line body: 408 when a request is
too slow, 431 when its head is too big, 429 past the per-address count.
None is logged per connection (a flood would be a flood of log lines):
the per-address refusal is logged once per address.

A connection is a :class:`~improto.web.upgrade.FirstRead` until its first
read, and a :class:`GuardedChannel` only if that read is not a plain
WebSocket upgrade (:mod:`improto.web.upgrade`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from improto.router.observer import NO_METRICS, Observer
from improto.settings import Settings
from improto.web.limits import ConnectionCounter, OncePerKey, http_response
from improto.web.timers import BucketTimer
from improto.web.upgrade import FirstRead, FirstReads

_log = Logger()

CSP = b"content-security-policy"
#: Sent with every response: no MIME sniffing, no framing, no referrer.
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
#: The policy of HTML responses that set none (error pages): nothing loads.
DEFAULT_CSP = b"default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
#: Seconds a refused or timed-out socket gets to read its answer and go.
LINGER = 2.0


def abort_later(clock: Any, transport: Any) -> Any:
    """Abort ``transport`` after :data:`LINGER` seconds unless it is gone by then."""
    return clock.callLater(LINGER, getattr(transport, "abortConnection", transport.loseConnection))


def add_security_headers(request: Request) -> None:
    headers = request.responseHeaders
    for name, value in SECURITY_HEADERS:
        if not headers.hasHeader(name):
            headers.setRawHeaders(name, [value])
    content_type = (headers.getRawHeaders(b"content-type") or [b""])[0]
    if content_type.lower().startswith(b"text/html") and not headers.hasHeader(CSP):
        headers.setRawHeaders(CSP, [DEFAULT_CSP])


class HardenedRequest(Request):
    """A request whose response always carries :data:`SECURITY_HEADERS`."""

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            add_security_headers(self)
        super().write(data)


class GuardedChannel(HTTPChannel):
    """
    An HTTP connection with a deadline for each request: from the
    connection (or the end of the previous response) until the request,
    headers and body, has arrived. Twisted's own ``timeOut`` is an idle
    timer that every byte resets, so a client sending one byte a second
    would hold the socket forever.

    While it is an HTTP connection it holds one slot of its address in the
    site's ``pending`` counter, given back when it closes or when a
    WebSocket takes the connection over.
    """

    site: GuardedSite
    _deadline: Any = None
    _slot: tuple[ConnectionCounter, str] | None = None
    _refused = False
    #: When the connection was made, where that was before this channel took
    #: it (:class:`~improto.web.upgrade.FirstRead`): the first request's
    #: deadline counts from then.
    _made_at: float | None = None

    def hold(self, counter: ConnectionCounter, address: str) -> None:
        self._slot = (counter, address)

    def _give_back(self) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            slot[0].release(slot[1])

    # -- the request deadline -----------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        timeout = self.site.settings.handshake_timeout
        if timeout:
            made_at, self._made_at = self._made_at, None
            if made_at is not None:
                timeout = max(0.0, made_at + timeout - self.site.reactor.seconds())
            self._deadline = self.callLater(timeout, self._too_slow)

    def _disarm(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def first_read_timed_out(self) -> None:
        """
        Nothing arrived within the site's first-read timeout: the request
        deadline's 408 where that timeout is the deadline, else (the idle
        timeout is the shorter) the idle timeout's quiet close.
        """
        if self.site.first_reads.timeout == self.site.settings.handshake_timeout:
            self._too_slow()
        else:
            self.timeoutConnection()

    def _too_slow(self) -> None:
        self._deadline = None
        self.site.metrics.refused("handshake_timeout")
        timeout = self.site.settings.handshake_timeout
        self._refuse(408, "Request Timeout", f"The request did not arrive within {timeout:g} s.")

    def _refuse(self, status: int, phrase: str, body: str) -> None:
        """Answer ``status``, read nothing more, and close (abort if it lingers)."""
        if self._refused or self.transport is None:
            return
        self._refused = True
        self._disarm()
        self.setTimeout(None)
        self.transport.write(http_response(status, phrase, body))
        self.loseConnection()
        self._abortingCall = abort_later(self, self.transport)

    # -- HTTPChannel --------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        # Twisted answers a bare 400; the limit deserves its own status.
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._too_big()
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._too_big()

    def _too_big(self) -> None:
        size = self.totalHeadersSize
        self.site.metrics.refused("header_too_large")
        self._refuse(431, "Request Header Fields Too Large",
                     f"The request line and headers may have at most {size} bytes.")

    def allContentReceived(self) -> None:
        self._disarm()
        super().allContentReceived()
        if self.transport is None:
            # A WebSocket took the connection over while the request was
            # rendered: it is no longer an HTTP connection of this address.
            self._give_back()
            # Nor will this channel hear of it again (the transport tells the
            # WebSocket protocol now), and the upgrade request never finishes:
            # let go of it, so channel and request are freed as soon as the
            # WebSocket protocol is done with the request, instead of waiting
            # as a reference cycle for the garbage collector.
            self.requests = []

    def requestDone(self, request: Request) -> None:
        # Armed first: a pipelined request in the buffer is parsed (and
        # disarms it) inside requestDone.
        if self.persistent:
            self._arm()
        super().requestDone(request)

    def timeoutConnection(self) -> None:
        # Twisted's logs every idle connection it closes.
        self._disarm()
        self.loseConnection()
        if self.transport is not None:
            self._abortingCall = abort_later(self, self.transport)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._disarm()
        self._give_back()
        super().connectionLost(reason)


class _TooManyPending(Protocol):
    """Answers 429 to a connection over the per-address count, then goes."""

    def __init__(self, response: bytes, clock: Any) -> None:
        self._response = response
        self._clock = clock
        self._abort: Any = None
        self._seen = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._response)
        self._abort = abort_later(self._clock, self.transport)

    def dataReceived(self, data: bytes) -> None:
        # Close once the request head is read: closing with unread bytes
        # would reset the connection and lose the answer.
        self._seen = (self._seen + data)[-4:]
        if b"\r\n\r\n" in self._seen and self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._abort is not None and self._abort.active():
            self._abort.cancel()


class GuardedSite(Site):
    """A :class:`~twisted.web.server.Site` of :class:`GuardedChannel` connections."""

    # A plain channel, not Twisted's HTTP/2-negotiating proxy (h2 is not
    # installed, and a WebSocket needs HTTP/1.1 anyway).
    protocol = GuardedChannel  # type: ignore[assignment]
    requestFactory = HardenedRequest
    #: What it counts refusals with (``twistd improto`` sets the router's).
    metrics: Observer = NO_METRICS
    #: Path -> the WebSocket factory an upgrade of it goes to, or None; from
    #: a :class:`~improto.web.resources.RootResource` (see :mod:`improto.web.upgrade`).
    upgrades: Callable[[bytes], Any] | None = None

    def __init__(self, resource: IResource, settings: Settings, reactor: Any) -> None:
        super().__init__(resource, timeout=settings.idle_timeout or None, reactor=reactor)
        self.settings = settings
        self.noisy = False
        #: The channels' callLater: idle timeouts and request deadlines, O(1) to cancel.
        self.timers = BucketTimer(self.reactor)
        #: HTTP connections (not WebSockets) per peer address.
        self.pending = ConnectionCounter(settings.max_handshakes_per_ip)
        self._logged = OncePerKey()
        self.upgrades = getattr(resource, "upgrade_factory", None)
        #: Connections before their first read (where ``upgrades`` routes
        #: some): timed out by the request deadline, or the idle timeout where
        #: shorter (``GuardedChannel.first_read_timed_out`` tells which by this timeout).
        timeouts = [t for t in (settings.handshake_timeout, settings.idle_timeout) if t]
        self.first_reads = FirstReads(self.reactor, min(timeouts, default=0))

    def buildProtocol(self, addr: IAddress) -> Protocol | None:  # type: ignore[override]
        host = getattr(addr, "host", None)
        address = str(host) if host is not None else str(addr)
        if not self.pending.acquire(address):
            self.metrics.refused("per_ip_pending")
            limit = self.pending.limit
            if self._logged.first(address):
                _log.warn(
                    "Refused HTTP connections from {address}: it has {limit} that are not "
                    "WebSockets yet (--max-handshakes-per-ip; logged once per address)",
                    address=address, limit=limit,
                )
            body = f"Too many connections in progress from {address} (at most {limit})."
            response = http_response(429, "Too Many Requests", body, (("Retry-After", "10"),))
            return _TooManyPending(response, self.reactor)
        if self.upgrades is None:
            return self.http_channel(address, addr, None)
        return FirstRead(self, address, addr)

    def http_channel(self, address: str, peer: IAddress, made_at: float | None) -> GuardedChannel:
        """
        A channel holding a slot of ``address`` (taken already) whose first
        request's deadline counts from ``made_at`` (None: from its connection).
        """
        channel = super().buildProtocol(peer)
        assert isinstance(channel, GuardedChannel)
        size = self.settings.max_header_size
        channel.totalHeadersSize = size
        channel.MAX_LENGTH = size
        # As HTTPFactory.buildProtocol sets the reactor's (TimeoutMixin reads it).
        channel.callLater = self.timers.call_later  # type: ignore[method-assign,assignment]
        channel.hold(self.pending, address)
        channel._made_at = made_at
        return channel
