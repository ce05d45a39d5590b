"""
The web layer: the only package that knows Autobahn and ``twisted.web``.

``protocol`` turns WebSocket connections into router sessions; ``resources``
builds the HTTP tree (the chat page, ``/healthz``, the WebSocket routes).
"""

from improto.web.resources import feed_resource, root_resource, websocket_resource

__all__ = ["feed_resource", "root_resource", "websocket_resource"]
