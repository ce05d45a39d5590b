"""
What a server counts, as seen by the sans-IO core: the :class:`Observer`
interface and :data:`NO_METRICS`, the default that counts nothing.

The router and the web layer call these methods where something worth
counting happens; :mod:`improto.metrics` implements them with
``prometheus_client``. Keeping the interface here keeps ``improto.router``
free of any metrics library, and an embedding program that wants no
metrics pays one empty method call per event.
"""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    """Events a server may count; every method must be cheap and must not raise."""

    def message_in(self, kind: str) -> None:
        """A client's message was accepted for delivery: ``group``, ``private`` or ``echo``."""

    def delivered(self, kind: str, count: int) -> None:
        """``count`` frames of one envelope were handed to local connections."""

    def error_sent(self, code: str) -> None:
        """An error frame with this :class:`~improto.protocol.codec.ErrorCode` value was sent."""

    def rate_limited(self) -> None:
        """A frame was refused for the sender's rate limit."""

    def session_opened(self) -> None:
        """A WebSocket connection became a router session (chat, echo or feed)."""

    def refused(self, reason: str) -> None:
        """A connection or handshake was refused (``origin``, ``per_ip``, ``auth``, ...)."""

    def connection_opened(self) -> None:
        """A WebSocket handshake completed."""

    def connection_closed(self) -> None:
        """A connection counted by :meth:`connection_opened` closed."""

    def close_sent(self, code: int) -> None:
        """The server started a WebSocket close with ``code``."""

    def slow_consumer_dropped(self) -> None:
        """A client that stopped reading was dropped."""


class NoMetrics:
    """The :class:`Observer` that counts nothing."""

    def message_in(self, kind: str) -> None:
        pass

    def delivered(self, kind: str, count: int) -> None:
        pass

    def error_sent(self, code: str) -> None:
        pass

    def rate_limited(self) -> None:
        pass

    def session_opened(self) -> None:
        pass

    def refused(self, reason: str) -> None:
        pass

    def connection_opened(self) -> None:
        pass

    def connection_closed(self) -> None:
        pass

    def close_sent(self, code: int) -> None:
        pass

    def slow_consumer_dropped(self) -> None:
        pass


NO_METRICS: Observer = NoMetrics()
