"""Settings shared by the tap, the web layer and embedding programs."""

from __future__ import annotations

import attrs


@attrs.frozen
class Settings:
    #: Longest text frame accepted on a chat route, in bytes. Frames up to
    #: four times that get a ``too_large`` error; longer ones close the
    #: connection with 1009, as RFC 6455 asks.
    max_message_size: int = 64 * 1024
    #: Origins allowed to open WebSockets (Autobahn patterns; ``*`` = any).
    allowed_origins: tuple[str, ...] = ("*",)
    #: Sustained frames per second per connection, and the burst allowed.
    rate: float = 20.0
    burst: float = 40.0
    #: Seconds between WebSocket pings, to find dead peers (0 = never).
    ping_interval: float = 30.0
    #: Request path of the echo route (the conformance suite's target).
    echo_path: str = "/echo"
    #: Bytes the server queues for a client that stopped reading before it
    #: drops the connection (a slow or stuck consumer).
    max_backlog: int = 4 * 1024 * 1024
    #: Seconds to wait for clients to answer the 1001 close at shutdown.
    shutdown_grace: float = 3.0
