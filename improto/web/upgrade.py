"""
WebSocket upgrades handed straight to Autobahn, without twisted.web.

A new connection of a :class:`~improto.web.site.GuardedSite` is a
:class:`FirstRead` until its first read. When that read is one whole,
plain upgrade head (:func:`improto.web.handshake.parse_plain`: ``GET``,
HTTP/1.1, simple header lines, no body) for a path the root resource
routes to a WebSocket factory (:meth:`RootResource.upgrade_factory
<improto.web.resources.RootResource.upgrade_factory>`), the bytes go to
that factory's protocol exactly as Autobahn's ``WebSocketResource.render``
gives its rebuilt ones, with the head as parsed, so that the handshake
does not read it again. Anything else (a head split over reads, bytes
outside plain ASCII, a body, a fixed route, a plain HTTP request) goes,
with the read, to a :class:`~improto.web.site.GuardedChannel`, and
twisted.web answers it as before; Autobahn's checks of the handshake are
the same on both paths.

Why a protocol of its own rather than a branch in the HTTP channel:
twisted.web's channel, built, started (TCP_NODELAY, an idle timer,
registering as the transport's producer) and undone for every connection
a WebSocket then takes, and the head parsed once to route it and again to
answer it, were 83k of the 675k instructions of a connection through the
site, against 584k for the in-stack ceiling's whole connection (605k
since; ``benchmarks/micro.py --instructions --ops
site-handshake,ceiling-handshake``).

Until its first read a connection has the site's request deadline
(:class:`FirstReads`): one reactor call for all connections, since they
share one timeout. It holds its address's slot of the site's ``pending``
count, as the channel does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure

from improto.web.handshake import parse_plain

if TYPE_CHECKING:
    from improto.web.site import GuardedSite

_log = Logger()


class FirstRead(Protocol):
    """A new connection of ``site``, until its first read says what it is."""

    def __init__(self, site: GuardedSite, address: str, peer: IAddress) -> None:
        self.site = site
        #: The key of the site's per-address count, whose slot this holds.
        self.address = address
        self.peer = peer

    def connectionMade(self) -> None:
        self.site.first_reads.add(self)

    def dataReceived(self, data: bytes) -> None:
        site = self.site
        made_at = site.first_reads.pop(self)
        request = parse_plain(data, site.settings.max_header_size)
        upgrades = site.upgrades
        assert upgrades is not None  # the site makes a FirstRead only where it has them
        factory = None if request is None else upgrades(request.path.encode("ascii"))
        protocol = None if factory is None else factory.buildProtocol(self.peer)
        if protocol is None:
            self.become_http(made_at).dataReceived(data)
            return
        transport = self.transport
        set_no_delay = getattr(transport, "setTcpNoDelay", None)  # not on a UNIX socket
        if set_no_delay is not None:
            set_no_delay(True)  # as twisted.web's channel sets it on every connection
        site.pending.release(self.address)  # no longer an HTTP connection of this address
        self.transport = None
        protocol.plain_request = request
        hand_over(transport, protocol, data)

    def become_http(self, made_at: float | None) -> Any:
        """
        Give the connection, and this address's slot, to a new HTTP channel
        whose first request's deadline counts from ``made_at`` (the clock's
        seconds; None: from now); the channel.
        """
        channel = self.site.http_channel(self.address, self.peer, made_at)
        transport = self.transport
        self.transport = None
        switch_protocol(transport, channel)
        channel.makeConnection(transport)
        return channel

    def timed_out(self) -> None:
        """No first read within the deadline: the channel answers as for a slow request."""
        self.become_http(None).first_read_timed_out()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Lost before its first read (after it, the transport is another protocol's).
        self.site.first_reads.pop(self)
        if self.transport is not None:
            self.transport = None
            self.site.pending.release(self.address)


class FirstReads:
    """
    The connections waiting for their first read, each timed out
    ``timeout`` seconds after it was made: since they share one timeout
    they fall due in the order they came, so one reactor call (for the
    oldest) serves them all, and adding and removing one is a dict
    operation (a ``callLater`` of Twisted's or of the site's bucket timer
    costs several times more per connection). With ``timeout`` 0 none is
    ever timed out (nor kept).
    """

    def __init__(self, clock: Any, timeout: float) -> None:
        self._clock = clock
        self.timeout = timeout
        #: Connection -> when it was made (the clock's seconds); oldest first.
        self._made_at: dict[FirstRead, float] = {}
        self._call: Any = None

    def __len__(self) -> int:
        return len(self._made_at)

    def add(self, connection: FirstRead) -> None:
        if not self.timeout:
            return
        self._made_at[connection] = self._clock.seconds()
        if self._call is None:
            self._call = self._clock.callLater(self.timeout, self._run)

    def pop(self, connection: FirstRead) -> float | None:
        """Forget ``connection``; when it was made, or None if it was not waiting."""
        return self._made_at.pop(connection, None)

    def _run(self) -> None:
        self._call = None
        made_at = self._made_at
        while made_at:
            connection = next(iter(made_at))
            wait = made_at[connection] + self.timeout - self._clock.seconds()
            if wait > 0:
                self._call = self._clock.callLater(wait, self._run)
                return
            del made_at[connection]
            try:
                connection.timed_out()
            except Exception:
                _log.failure("Timing out a connection that sent nothing failed")


def switch_protocol(transport: Any, protocol: Any) -> None:
    """Make ``protocol`` the one ``transport`` (TCP, or TLS over it) delivers to."""
    if isinstance(transport, ProtocolWrapper):  # TLS
        transport.wrappedProtocol = protocol
    else:
        transport.protocol = protocol


def hand_over(transport: Any, protocol: Any, data: bytes) -> None:
    """
    Make ``protocol`` the owner of ``transport`` and give it ``data``, as
    ``autobahn.twisted.resource.WebSocketResource.render`` does.
    """
    switch_protocol(transport, protocol)
    protocol.makeConnection(transport)
    protocol.dataReceived(data)
