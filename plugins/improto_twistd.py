"""The twistd dropin: ``twistd improto``. Kept tiny; everything is in improto.tap."""

from twisted.application.service import ServiceMaker

Improto = ServiceMaker(
    "improto",
    "improto.tap",
    "An instant-messaging WebSocket server (group and private chat).",
    "improto",
)
