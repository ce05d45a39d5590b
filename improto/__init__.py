"""
improto: an instant-messaging server on Twisted and Autobahn.

What an embedding program uses::

    from improto import MemoryBackend, Router, websocket_resource, feed_resource

None of these imports the global reactor. ``RedisBackend`` needs the
``improto[redis]`` extra and is imported only when asked for.
"""

from typing import Any

from improto.backends.interface import Envelope, IBackend
from improto.backends.memory import MemoryBackend
from improto.router import Router, RouterLimits
from improto.settings import Settings
from improto.web import feed_resource, websocket_resource

__version__ = "0.1.0"

__all__ = [
    "Envelope",
    "IBackend",
    "MemoryBackend",
    "RedisBackend",
    "Router",
    "RouterLimits",
    "Settings",
    "feed_resource",
    "websocket_resource",
]


def __getattr__(name: str) -> Any:
    if name == "RedisBackend":
        from improto.backends.redis import RedisBackend

        return RedisBackend
    raise AttributeError(f"module 'improto' has no attribute {name!r}")
