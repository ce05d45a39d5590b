"""
Live feeds: anonymous connections that receive what server-side code
publishes to one group, and whose text frames go to a handler
(``examples/vote.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autobahn.websocket.types import ConnectionRequest

from improto.protocol import codec
from improto.protocol.codec import ErrorCode, ProtocolError
from improto.router import Router, Session
from improto.settings import Settings
from improto.web.chat import ChatServerFactory
from improto.web.framing import accept_shareable
from improto.web.link import LinkProtocol

FeedHandler = Callable[[str, Callable[[Any], None]], None]


class FeedServerProtocol(LinkProtocol):
    """
    A connection to a live feed: it receives whatever server-side code
    publishes to the feed's group, and its text frames go to a handler.
    """

    factory: FeedServerFactory

    def onConnect(self, request: ConnectionRequest) -> None:
        self.factory.admit(self, request)  # origin and connections per address
        self.maxMessagePayloadSize = self.factory.router.limits.max_message_size
        self.perMessageCompressionAccept = accept_shareable(
            self.maxMessagePayloadSize, request.headers.get("sec-websocket-extensions")
        )

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


class FeedServerFactory(ChatServerFactory):
    protocol: type[LinkProtocol] = FeedServerProtocol

    def __init__(
        self, router: Router, group: str, on_text: FeedHandler, options: Settings, reactor: Any
    ) -> None:
        super().__init__(router, options, reactor)
        self.group = group
        self.on_text = on_text
