"""
Skip debug-log formatting that stock Autobahn does even with debug off.

Autobahn builds the arguments of its ``log.debug`` calls eagerly: every
frame written pays for ``hltype``/``hlval`` colour formatting (about 2 µs
a frame) and every connection pays for ``pformat`` of ~40 settings
(about 1 ms). Those costs showed up at the top of profiles of a group
broadcast and of connection churn (``benchmarks/``), so the hot paths are
re-stated here without the log calls. Everything else is Autobahn's own.
"""

from __future__ import annotations

from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol


class QuietLoggingMixin:
    """Mix in before ``WebSocketServerProtocol``."""

    state: int
    send_queue: Any
    transport: Any
    trafficStats: Any
    logOctets: bool
    factory: Any
    CONFIG_ATTRS: list[str]

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        if chopsize or sync or len(self.send_queue) > 0:
            super().sendData(data, sync, chopsize)  # type: ignore[misc]
            return
        self.transport.write(data)
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.trafficStats.outgoingOctetsWireLevel += len(data)
        elif self.state in (
            WebSocketProtocol.STATE_CONNECTING,
            WebSocketProtocol.STATE_PROXY_CONNECTING,
        ):
            self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)
        if self.logOctets:
            self.logTxOctets(data, False)  # type: ignore[attr-defined]

    def _connectionMade(self) -> None:
        # The pformat is a module global of Autobahn's; swapping it only for
        # this call (on the reactor thread) leaves every other user alone.
        import autobahn.websocket.protocol as ab

        saved = ab.pformat
        ab.pformat = _no_format  # type: ignore[assignment]
        try:
            super()._connectionMade()  # type: ignore[misc]
        finally:
            ab.pformat = saved


def _no_format(obj: object) -> str:
    return ""
