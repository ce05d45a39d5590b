"""
improto: an instant-messaging server on Twisted and Autobahn.

What an embedding program uses::

    from improto import MemoryBackend, Router, websocket_resource, feed_resource

None of these imports the global reactor.
"""

from improto.backend import Envelope, IBackend
from improto.memory import MemoryBackend
from improto.router import Router, RouterLimits
from improto.settings import Settings
from improto.web import feed_resource, websocket_resource

__version__ = "0.1.0"

__all__ = [
    "Envelope",
    "IBackend",
    "MemoryBackend",
    "Router",
    "RouterLimits",
    "Settings",
    "feed_resource",
    "websocket_resource",
]
