"""
WebSocket upgrades handed straight to Autobahn, without twisted.web's Request.

On the twisted.web path an upgrade request is parsed into a ``Request``,
routed through the resource tree, and then written back out as bytes by
Autobahn's ``WebSocketResource`` for Autobahn to parse again: about a fifth
of a connection's set-up (``benchmarks/micro.py --ops site-handshake``).
When a connection's first read is one whole, plain upgrade head (``GET``,
HTTP/1.1, simple header lines, no body) for a path the root resource
routes to a WebSocket factory (:meth:`RootResource.upgrade_factory
<improto.web.resources.RootResource.upgrade_factory>`),
:class:`~improto.web.site.GuardedChannel` gives those bytes to that
factory's protocol exactly as ``WebSocketResource.render`` gives its
rebuilt ones. Anything else (a head split over reads, bytes outside
plain ASCII, a body, a fixed route, a plain HTTP request) takes the
twisted.web path, which answers it as before; Autobahn parses and checks
the handshake on both paths.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.protocols.policies import ProtocolWrapper

#: A request line and header lines of printable ASCII, ending the head.
PLAIN_HEAD = re.compile(
    rb"GET (/[!-~]*) HTTP/1\.1\r\n(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t -~]*\r\n)+\r\n"
)
_UPGRADE = re.compile(rb"\r\nupgrade:[ \t]*websocket[ \t]*\r\n", re.IGNORECASE)
_BODY = re.compile(rb"\r\n(?:content-length|transfer-encoding):", re.IGNORECASE)


def upgrade_path(data: bytes, limit: int) -> bytes | None:
    """
    The path (without its query) of the request in ``data`` if ``data``
    starts with a whole plain WebSocket upgrade head of at most ``limit``
    bytes; else None.
    """
    end = data.find(b"\r\n\r\n", 0, limit)
    if end < 0:
        return None
    head = data[: end + 4]
    match = PLAIN_HEAD.fullmatch(head)
    if match is None or _UPGRADE.search(head) is None or _BODY.search(head) is not None:
        return None
    return match.group(1).split(b"?", 1)[0]


def hand_over(transport: Any, protocol: Any, data: bytes) -> None:
    """
    Make ``protocol`` the owner of ``transport`` and give it ``data``, as
    ``autobahn.twisted.resource.WebSocketResource.render`` does.
    """
    if isinstance(transport, ProtocolWrapper):  # TLS
        transport.wrappedProtocol = protocol
    else:
        transport.protocol = protocol
    protocol.makeConnection(transport)
    protocol.dataReceived(data)
