"""
Settings of the web layer and the service: origins, pings, the echo route,
what one address or user may hold, HTTP timeouts, backpressure and
shutdown. What a connection may send (size, rate, groups) is the router's
:class:`~improto.router.limits.RouterLimits`, and the web layer reads it
from the router, so no number is configured twice.

The defaults are the ones ``twistd improto --help`` shows; a limit of 0
means unlimited.
"""

from __future__ import annotations

import attrs

from improto.auth.identity import OPEN_MODE, Authenticator


@attrs.frozen
class Settings:
    #: Origins allowed to open WebSockets besides the server's own (and
    #: clients that send no Origin): patterns with ``*`` wildcards, a
    #: default port may be left out; ``null`` for file:// pages; ``*`` for
    #: any origin. See :mod:`improto.web.origins`.
    allowed_origins: tuple[str, ...] = ()
    #: Seconds between WebSocket pings, to find dead peers (0 = never).
    ping_interval: float = 30.0
    #: Request path of the echo route (the conformance suite's target);
    #: "" turns the route off (and its path is then refused with 404).
    echo_path: str = "/echo"
    #: WebSocket connections (chat, echo and feeds) one peer address may
    #: hold; more are refused with HTTP 429 at the handshake.
    max_connections_per_ip: int = 64
    #: Chat connections one nickname may hold on this node; more are closed
    #: with code 4029 right after the handshake.
    max_connections_per_user: int = 8
    #: HTTP connections one peer address may hold that are not (yet)
    #: WebSockets; more are answered 429 and closed at once.
    max_handshakes_per_ip: int = 16
    #: Seconds an HTTP request (headers and body, so a WebSocket handshake
    #: too) may take to arrive, counted from the connection or from the
    #: end of the previous response; then 408 and close.
    handshake_timeout: float = 10.0
    #: Seconds an HTTP connection may stay silent before it is closed.
    idle_timeout: float = 5.0
    #: Bytes of request line and headers one HTTP request may have; more
    #: are answered 431 and closed.
    max_header_size: int = 16384
    #: Bytes the server queues for a client that stopped reading before it
    #: drops the connection (a slow or stuck consumer).
    max_backlog: int = 4 * 1024 * 1024
    #: Seconds to wait for clients to answer the 1001 close at shutdown.
    shutdown_grace: float = 3.0
    #: Who a chat connection is: open mode (the URL's nickname) or token mode.
    authenticator: Authenticator = OPEN_MODE
