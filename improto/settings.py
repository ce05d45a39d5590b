"""
Settings of the web layer and the service: origins, pings, the echo route,
backpressure and shutdown. What a connection may send (size, rate, groups)
is the router's :class:`~improto.router.limits.RouterLimits`, and the web
layer reads it from the router, so no number is configured twice.
"""

from __future__ import annotations

import attrs

from improto.auth.identity import OPEN_MODE, Authenticator


@attrs.frozen
class Settings:
    #: Origins allowed to open WebSockets (Autobahn patterns; ``*`` = any).
    allowed_origins: tuple[str, ...] = ("*",)
    #: Seconds between WebSocket pings, to find dead peers (0 = never).
    ping_interval: float = 30.0
    #: Request path of the echo route (the conformance suite's target).
    echo_path: str = "/echo"
    #: Bytes the server queues for a client that stopped reading before it
    #: drops the connection (a slow or stuck consumer).
    max_backlog: int = 4 * 1024 * 1024
    #: Seconds to wait for clients to answer the 1001 close at shutdown.
    shutdown_grace: float = 3.0
    #: Who a chat connection is: open mode (the URL's nickname) or token mode.
    authenticator: Authenticator = OPEN_MODE
