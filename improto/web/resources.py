"""
The HTTP side: the chat page, ``/healthz`` and the WebSocket routes.

:func:`websocket_resource` is what an embedding program mounts in its own
``twisted.web`` site; :func:`root_resource` is the whole server's tree.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from importlib import resources
from typing import Any
from urllib.parse import unquote_to_bytes

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.python.filepath import FilePath
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request
from twisted.web.static import File

from improto.router import Router
from improto.settings import Settings
from improto.web.chat import ChatServerFactory
from improto.web.feed import FeedHandler, FeedServerFactory


def served_by_twisted_web(factory: ChatServerFactory) -> WebSocketResource:
    """
    ``factory`` as a twisted.web resource. Its connections come through an
    ``HTTPChannel``, which sets ``TCP_NODELAY`` on every TCP (and TLS)
    socket, so the protocol need not set it again (``no_delay_set``,
    :mod:`improto.web.details`).
    """
    factory.no_delay_set = True
    return WebSocketResource(factory)


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
    return served_by_twisted_web(ChatServerFactory(router, settings, reactor))


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
    return served_by_twisted_web(FeedServerFactory(router, group, on_text, settings, reactor))


#: The policy of a --static page: it may load what it likes, but not be
#: framed (X-Frame-Options does the same for older browsers).
STATIC_CSP = b"frame-ancestors 'none'"
_INLINE = r"<{tag}(\s[^>]*)?>(.*?)</{tag}\s*>"


def _hashes(html: str, tag: str) -> list[str]:
    """CSP source expressions for the inline ``<script>``/``<style>`` elements."""
    found = []
    for match in re.finditer(_INLINE.format(tag=tag), html, re.S | re.I):
        attributes = (match.group(1) or "").lower()
        if tag == "script" and "src=" in attributes:
            continue
        digest = hashlib.sha256(match.group(2).encode("utf-8")).digest()
        found.append(f"'sha256-{base64.b64encode(digest).decode('ascii')}'")
    return found


def page_csp(page: bytes) -> bytes:
    """
    A strict Content-Security-Policy for the chat page, computed from the
    very bytes served: only its own inline script and style run (by hash,
    so an injected one does not), it connects only to this server (CSP's
    ``'self'`` covers ws:/wss: to the same host and port), loads nothing
    else and may not be framed. Style attributes stay allowed: the page
    colours avatars with them, and they cannot run code.
    """
    html = page.decode("utf-8")
    scripts = " ".join(_hashes(html, "script")) or "'none'"
    styles = " ".join(_hashes(html, "style")) or "'none'"
    return "; ".join([
        "default-src 'none'",
        f"script-src {scripts}",
        f"style-src {styles}",
        "style-src-attr 'unsafe-inline'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]).encode("ascii")


class PageResource(Resource):
    """One HTML page, sent with its Content-Security-Policy."""

    isLeaf = True

    def __init__(self, content: bytes, csp: bytes) -> None:
        super().__init__()
        self.content = content
        self.csp = csp

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", self.csp)
        return self.content


class StaticFolder(File):
    """``--static`` folder: its files, and no directory listings."""

    def directoryListing(self) -> IResource:
        return notFound()


def default_page() -> PageResource:
    page = resources.files("improto.web").joinpath("static/index.html").read_bytes()
    return PageResource(page, page_csp(page))


def page_from_path(path: str) -> Resource:
    """``--static``: a file is served at ``/``; a folder must hold index.html."""
    target = FilePath(path)
    if target.isdir():
        return StaticFolder(target.path)
    return PageResource(target.getContent(), STATIC_CSP)


class UpgradeRequired(Resource):
    """A plain HTTP request on a WebSocket route."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setResponseCode(426)
        request.setHeader(b"upgrade", b"websocket")
        request.setHeader(b"connection", b"Upgrade")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"This is a WebSocket route: connect with a WebSocket client.\n"


class NoSuchRoute(Resource):
    """A WebSocket upgrade on a route that is not a WebSocket route."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"No WebSocket here: this path is one of the server's fixed routes.\n"


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


#: Fixed routes at the root: an upgrade there is refused (404) instead of
#: becoming a user of that name on the ``/<nickname>`` route.
RESERVED_NAMES = frozenset(
    (b"", b"index.html", b"ws", b"healthz", b"metrics", b"echo", b"favicon.ico", b"robots.txt")
)


class RootResource(Resource):
    """
    ``/`` and ``/ws`` serve the page (the seeds served it at one or the
    other); a WebSocket upgrade on any other path goes to the chat
    routes, since the seeds put nicknames right below the root, except on
    the fixed routes (:data:`RESERVED_NAMES`). A plain request on a
    WebSocket route is answered 426. With ``nameless_chat`` (token mode,
    where the token names the user) an upgrade on ``/``, ``/ws`` or
    ``/ws/`` is a chat connection too.
    """

    def __init__(
        self,
        websocket: IResource,
        page: IResource,
        health: IResource,
        echo_path: str = "/echo",
        nameless_chat: bool = False,
        metrics: IResource | None = None,
        websocket_factory: WebSocketServerFactory | None = None,
    ) -> None:
        super().__init__()
        self._metrics = metrics
        #: ``websocket``'s factory, for :meth:`upgrade_factory`.
        self._websocket_factory = websocket_factory
        self._nameless_chat = nameless_chat
        self._websocket = websocket
        self._page = page
        self._health = health
        self._echo_path = echo_path.encode("utf-8")

    def getChild(self, path: bytes, request: Request) -> IResource:
        if _is_websocket_upgrade(request):
            if self._is_fixed_route(path, request.postpath or [], request.path):
                return NoSuchRoute()
            return self._websocket
        if path in (b"", b"index.html") or (path == b"ws" and not request.postpath):
            return self._static(b"", request) if isinstance(self._page, File) else self._page
        if path == b"healthz":
            return self._health
        if path == b"metrics" and self._metrics is not None:
            return self._metrics
        if path == b"ws" or (self._echo_path and request.path == self._echo_path):
            return UpgradeRequired()
        if isinstance(self._page, File):
            return self._static(path, request)
        return notFound()

    def _static(self, path: bytes, request: Request) -> IResource:
        """A file of the ``--static`` folder (``b""``: its index.html)."""
        assert isinstance(self._page, File)
        request.setHeader(b"content-security-policy", STATIC_CSP)
        return self._page.getChild(path, request)

    def _is_fixed_route(self, segment: bytes, rest: list[bytes], path: bytes) -> bool:
        """Whether an upgrade of ``path`` (first segment ``segment``, then ``rest``) is refused."""
        if path == self._echo_path:
            return False
        if self._nameless_chat and segment in (b"", b"ws"):
            return False
        return not rest and segment in RESERVED_NAMES

    def upgrade_factory(self, path: bytes) -> WebSocketServerFactory | None:
        """
        The factory that :meth:`getChild` would hand a WebSocket upgrade of
        ``path`` (raw, without its query) to, or None where it would not
        (a fixed route, or a resource that is not a plain
        ``WebSocketResource`` of ours): :class:`~improto.web.upgrade.FirstRead`
        then leaves the request to twisted.web.
        """
        if self._websocket_factory is None:
            return None
        segments = path[1:].split(b"/")
        if b"%" in path:
            segments = [unquote_to_bytes(s) for s in segments]
        if self._is_fixed_route(segments[0], segments[1:], path):
            return None
        return self._websocket_factory


def root_resource(
    router: Router, settings: Settings, reactor: Any, static: str | None = None,
    metrics: IResource | None = None,
) -> RootResource:
    page = page_from_path(static) if static else default_page()
    chat = ChatServerFactory(router, settings, reactor)
    return RootResource(
        served_by_twisted_web(chat), page, HealthResource(router),
        settings.echo_path, nameless_chat=settings.authenticator.verified, metrics=metrics,
        websocket_factory=chat,
    )
