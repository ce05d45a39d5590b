"""
The opening handshake's request, read the short way when it is plain.

Autobahn's ``processHandshake`` checks every request line by line (a
regular expression per header, ``urlparse``, a debug-log call per step),
then calls ``onConnect`` through ``txaio.as_future`` and a Deferred even
when it answers at once: about a fifth of a connection's set-up on the
memory backend (``benchmarks/micro.py --instructions --ops site-handshake``).

:func:`read_plain` reads the heads that browsers and client libraries
send (``GET``, HTTP/1.1, each header once, RFC 6455 version 13, a
well-formed key) with one regular expression, and returns None for
anything else; :func:`open_plain` then makes the same checks Autobahn
makes on what is left (host port, upgrade tokens, subprotocols, origin),
sets what Autobahn's own reading sets, and calls ``onConnect`` directly.
Whatever it does not accept goes to Autobahn's ``processHandshake``
untouched, so every refusal, with its status and reason, stays
Autobahn's. ``tests/web/test_handshake.py`` feeds both paths the same
requests, plain and hostile, and compares what ``onConnect`` is given and
what the client is sent.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any, NamedTuple
from urllib.parse import parse_qs

import txaio
from autobahn.websocket import protocol as _autobahn
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

_log = Logger()

#: A request line and header lines of printable ASCII, ending the head.
PLAIN_HEAD = re.compile(
    rb"GET (/[!-~]*) HTTP/1\.1\r\n(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t -~]*\r\n)+\r\n"
)

_KEY = re.compile(r"[A-Za-z0-9+/]{22}==")
#: Autobahn's own helpers for the origin check (private names: if an Autobahn
#: release drops them, every handshake takes Autobahn's path, and
#: tests/web/test_handshake.py compares the two paths on whatever is installed).
_url_to_origin: Any = getattr(_autobahn, "_url_to_origin", None)
_is_same_origin: Any = getattr(_autobahn, "_is_same_origin", None)


class PlainRequest(NamedTuple):
    """A plain upgrade request, as Autobahn's ``processHandshake`` would read it."""

    head: bytes
    status_line: str
    uri: str
    path: str
    params: dict[str, list[str]]
    #: Lower-case names; values without surrounding spaces and tabs.
    headers: dict[str, str]
    #: The Host header's host, without the port.
    host: str
    #: The Host header's port, or None when it names none.
    port: int | None
    protocols: list[str]
    #: The Origin header, or None when the client sent none.
    origin: str | None
    key: str


def read_plain(data: bytes, external_port: int | None) -> PlainRequest | None:
    """
    The request at the start of ``data`` if it is a whole plain RFC 6455
    upgrade request that Autobahn would accept as far as the request alone
    tells (``external_port``: the factory's, which the Host port must match
    when set); else None, also for a head not complete yet.
    """
    request = parse_plain(data)
    if request is None or not _port_allowed(request, external_port):
        return None
    return request


def parse_plain(data: bytes, limit: int | None = None) -> PlainRequest | None:
    """
    :func:`read_plain` before the one check that needs the factory (the
    Host port): what a connection's first read is parsed with, before it is
    known which factory will take it (:mod:`improto.web.upgrade`). None
    also for a head longer than ``limit`` bytes and for a request with a
    body (``Content-Length`` or ``Transfer-Encoding``), which twisted.web reads.
    """
    end = data.find(b"\r\n\r\n", 0, limit)
    if end < 0:
        return None
    head = data[: end + 4]
    match = PLAIN_HEAD.fullmatch(head)
    if match is None:
        return None
    uri = match.group(1).decode("ascii")
    # urlparse would split off ";params" and a "//netloc"; Autobahn refuses a fragment.
    if "#" in uri or ";" in uri or uri.startswith("//"):
        return None
    lines = head[:-4].decode("ascii").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip(" \t")
    if len(headers) != len(lines) - 1:
        return None  # a repeated header: Autobahn joins the values, or refuses some
    if "content-length" in headers or "transfer-encoding" in headers:
        return None
    host_port = _host_port(headers.get("host"))
    if (
        host_port is None
        or not _has_token(headers.get("upgrade"), "websocket")
        or not _has_token(headers.get("connection"), "upgrade")
        or headers.get("sec-websocket-version") != "13"
    ):
        return None
    key = headers.get("sec-websocket-key")
    if key is None or _KEY.fullmatch(key) is None:
        return None
    protocols: list[str] = []
    if "sec-websocket-protocol" in headers:
        protocols = [p.strip() for p in headers["sec-websocket-protocol"].split(",")]
        if len(set(protocols)) != len(protocols):
            return None
    path, _, query = uri.partition("?")
    # Positional: half the cost of keywords for a NamedTuple.
    return PlainRequest(
        head, lines[0], uri, path, parse_qs(query) if query else {}, headers, host_port[0],
        host_port[1], protocols, headers.get("origin"), key,
    )


def _host_port(value: str | None) -> tuple[str, int | None] | None:
    """The Host header's host and port (None if it has none), as Autobahn splits it; None: not plain."""
    if value is None:
        return None
    if ":" not in value or value.endswith("]"):
        return value, None
    host, port = value.rsplit(":", 1)
    try:
        return host, int(port.strip())
    except ValueError:
        return None


def _port_allowed(request: PlainRequest, external_port: int | None) -> bool:
    """Autobahn refuses a Host port other than the factory's ``externalPort``, where it has one."""
    return not external_port or request.port is None or request.port == external_port


def _has_token(value: str | None, token: str) -> bool:
    if value is None:
        return False
    value = value.lower()
    return value == token or any(v.strip() == token for v in value.split(","))


def open_plain(link: Any, request: PlainRequest | None = None) -> bool:
    """
    Do ``link``'s (an Autobahn ``WebSocketServerProtocol``) opening
    handshake the short way if its request is plain and passes the checks
    that depend on its factory; False, having changed nothing, when it must
    take Autobahn's ``processHandshake``. ``request``: the head at the
    start of ``link.data`` parsed already (by :func:`parse_plain`), if it was.
    """
    if _url_to_origin is None or _is_same_origin is None:
        return False
    factory = link.factory
    if request is None or not link.data.startswith(request.head):
        request = parse_plain(link.data)
    if request is None or not _port_allowed(request, factory.externalPort) or 13 not in link.versions:
        return False
    if "x-forwarded-for" in request.headers and link.trustXForwardedFor:
        return False
    if link.maxConnections > 0 and factory.countConnections > link.maxConnections:
        return False
    if request.origin is not None and not _origin_allowed(link, request.origin):
        return False
    extensions = request.headers.get("sec-websocket-extensions")
    # What Autobahn's processHandshake sets, read by its later steps.
    link.http_request_data = request.head
    link.http_status_line = request.status_line
    link.http_headers = request.headers
    link.http_request_uri = request.uri
    link.http_request_path = request.path
    link.http_request_params = request.params
    link.http_request_host = request.host
    link.websocket_version = 13
    link.websocket_protocols = request.protocols
    link.websocket_origin = request.origin or ""
    link.websocket_extensions = [] if extensions is None else link._parseExtensionsHeader(extensions)
    link.data = link.data[len(request.head):]
    link._wskey = request.key
    connection_request = ConnectionRequest(
        link.peer, request.headers, request.host, request.path, request.params, 13,
        link.websocket_origin, request.protocols, link.websocket_extensions,
    )
    try:
        answer = link.onConnect(connection_request)
    except Exception:
        _refuse(Failure(), link)
        return True
    if hasattr(answer, "__await__"):
        answer = ensureDeferred(answer)
    if isinstance(answer, Deferred):
        answer.addCallbacks(_succeed, _refuse, callbackArgs=(link,), errbackArgs=(link,))
    else:
        _succeed(answer, link)
    return True


def _succeed(answer: Any, link: Any) -> None:
    """
    Autobahn's ``succeedHandshake``. If it raises before the handshake is
    answered (``onConnect`` chose a subprotocol the client did not offer:
    a bug), the client gets a 500 and the bug is logged; Autobahn's own path
    would leave the error in a Deferred and the client to its handshake timeout.
    """
    try:
        if not _answer_plain(answer, link):
            link.succeedHandshake(answer)
    except Exception:
        if link.state != link.STATE_CONNECTING:
            raise
        _refuse(Failure(), link)


_WS_MAGIC = _autobahn.WebSocketProtocol._WS_MAGIC
_OPEN = _autobahn.WebSocketProtocol.STATE_OPEN


def _answer_plain(answer: Any, link: Any) -> bool:
    """
    Autobahn's ``succeedHandshake`` (hash-pinned in
    ``tests/web/test_handshake.py``) where it has nothing to negotiate: no
    extension offered, no extra response headers, ``answer`` a subprotocol
    the client offered or None, no timings tracked. The same response and
    state; its response is built in one join instead of seven string
    concatenations and two loops over empty header lists, and its two
    ``log.debug`` calls are left out. False, having done nothing, otherwise.
    """
    factory = link.factory
    if (link.websocket_extensions or factory.headers or link.trackedTimings
            or not (answer is None or (type(answer) is str and answer in link.websocket_protocols))):
        return False
    link.websocket_protocol_in_use = answer
    link.websocket_extensions_in_use = []
    accept = base64.b64encode(hashlib.sha1(link._wskey.encode("utf8") + _WS_MAGIC).digest()).decode()
    server = factory.server
    response = "".join((
        "HTTP/1.1 101 Switching Protocols\r\n",
        f"Server: {server}\r\n" if server else "",
        "Upgrade: WebSocket\r\nConnection: Upgrade\r\n",
        "" if answer is None else f"Sec-WebSocket-Protocol: {answer}\r\n",
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n",
    ))
    link.sendData(response.encode("utf8"))
    link.http_response_data = response
    link.state = _OPEN
    timer = link.openHandshakeTimeoutCall
    if timer is not None:
        timer.cancel()
        link.openHandshakeTimeoutCall = None
    link.inside_message = False
    link.current_frame = None
    if link.autoPingInterval:
        link.autoPingPendingCall = factory._batched_timer.call_later(link.autoPingInterval, link._sendAutoPing)
    link._onOpen()
    txaio.resolve(link.is_open, None)  # type: ignore[attr-defined]
    if len(link.data) > 0:
        link.consumeData()
    return True


def _origin_allowed(link: Any, origin: str) -> bool:
    """Autobahn's origin check; False also for an Origin it cannot read (it refuses it)."""
    try:
        origin_tuple = _url_to_origin(origin)
    except ValueError:
        return False
    if origin_tuple == "null" and link.factory.allowNullOrigin:
        return True
    factory = link.factory
    return bool(_is_same_origin(
        origin_tuple, "https" if factory.isSecure else "http",
        factory.externalPort or factory.port, link.allowedOriginsPatterns,
    ))


def _refuse(failure: Failure, link: Any = None) -> None:
    """What Autobahn does when ``onConnect`` raises or its Deferred fails."""
    if isinstance(failure.value, ConnectionDeny):
        link.failHandshake(failure.value.reason, failure.value.code)
        return
    _log.failure("Unexpected exception in onConnect", failure)
    link.failHandshake(f"Internal server error: {failure.value}", ConnectionDeny.INTERNAL_SERVER_ERROR)
