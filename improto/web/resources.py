"""
The HTTP side: the chat page, ``/healthz`` and the WebSocket routes.

:func:`websocket_resource` is what an embedding program mounts in its own
``twisted.web`` site; :func:`root_resource` is the whole server's tree.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.python.filepath import FilePath
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request
from twisted.web.static import Data, File

from improto.router import Router
from improto.settings import Settings
from improto.web.chat import ChatServerFactory
from improto.web.feed import FeedHandler, FeedServerFactory


def websocket_resource(
    router: Router, settings: Settings = Settings(), reactor: Any = None
) -> WebSocketResource:
    """
    A leaf resource serving every chat route below where it is mounted:
    ``<mount>/<nickname>`` joins the chat as that nickname.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return WebSocketResource(ChatServerFactory(router, settings, reactor))


def feed_resource(
    router: Router,
    group: str,
    on_text: FeedHandler,
    settings: Settings = Settings(),
    reactor: Any = None,
) -> WebSocketResource:
    """
    A leaf resource for a live feed: every connection receives what
    ``router.publish(..., group=group)`` sends, on every node, and its text
    frames are passed to ``on_text(text, reply)``.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return WebSocketResource(FeedServerFactory(router, group, on_text, settings, reactor))


def default_page() -> Resource:
    page = resources.files("improto.web").joinpath("static/index.html").read_bytes()
    return Data(page, "text/html; charset=utf-8")


def page_from_path(path: str) -> Resource:
    """``--static``: a file is served at ``/``; a folder must hold index.html."""
    target = FilePath(path)
    if target.isdir():
        return File(target.path)
    return Data(target.getContent(), "text/html; charset=utf-8")


class HealthResource(Resource):
    isLeaf = True

    def __init__(self, router: Router) -> None:
        super().__init__()
        self._router = router

    def render_GET(self, request: Request) -> bytes:
        health = self._router.backend.health()
        request.setResponseCode(200 if health.ok else 503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        body = {
            "status": "ok" if health.ok else "unavailable",
            "backend": {"state": health.state.value, "detail": health.detail},
            "node": self._router.backend.node_id,
            "sessions": len(self._router.sessions),
            # sessions, users, groups, channels: all zero when nobody is connected.
            "router": self._router.counts(),
        }
        return json.dumps(body).encode("utf-8")


def _is_websocket_upgrade(request: Request) -> bool:
    upgrade = request.getHeader(b"upgrade")
    return upgrade is not None and upgrade.lower() == b"websocket"


class RootResource(Resource):
    """
    ``/`` and ``/ws`` serve the page (the seeds served it at one or the
    other); any WebSocket upgrade, whatever its path, goes to the chat
    routes, since the seeds put nicknames right below the root.
    """

    def __init__(self, websocket: IResource, page: IResource, health: IResource) -> None:
        super().__init__()
        self._websocket = websocket
        self._page = page
        self._health = health

    def getChild(self, path: bytes, request: Request) -> IResource:
        if _is_websocket_upgrade(request):
            return self._websocket
        if path in (b"", b"index.html") or (path == b"ws" and not request.postpath):
            return self._page
        if path == b"healthz":
            return self._health
        if isinstance(self._page, File):
            return self._page.getChild(path, request)
        return notFound()


def root_resource(
    router: Router, settings: Settings, reactor: Any, static: str | None = None
) -> RootResource:
    page = page_from_path(static) if static else default_page()
    return RootResource(
        websocket_resource(router, settings, reactor), page, HealthResource(router)
    )
