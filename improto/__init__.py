"""
improto: an instant-messaging server on Twisted and Autobahn.

The pieces an embedding program uses::

    from improto import MemoryBackend, Router, websocket_resource
"""

from improto.backend import Envelope, IBackend
from improto.memory import MemoryBackend
from improto.router import Router, RouterLimits
from improto.settings import Settings

__version__ = "0.1.0"


def websocket_resource(*args, **kwargs):  # type: ignore[no-untyped-def]
    """See :func:`improto.web.websocket_resource` (imported lazily: it needs Autobahn)."""
    from improto.web import websocket_resource as build

    return build(*args, **kwargs)


__all__ = [
    "Envelope",
    "IBackend",
    "MemoryBackend",
    "Router",
    "RouterLimits",
    "Settings",
    "websocket_resource",
]
