"""
Peer: the in-stack ceiling, plain Autobahn on Twisted done the fast way.

The seeds' chat (``{"username", "msg"}`` to every other connection,
``{"to_user", "msg"}`` to that user as ``{"msg", "from_user"}``; the last
path segment names the user) with the two things a careful Autobahn
application can do without improto:

* a broadcast is framed once (``factory.prepareMessage``) and the same
  bytes go to every member (``sendPreparedMessage``);
* no debug-log formatting. Autobahn builds its ``log.debug`` arguments
  eagerly (``hltype()`` of a bound method is 3-4 µs, ``pformat`` of the
  settings ~0.35 ms per connection) and txaio drops them afterwards. Here
  each protocol's ``log`` is a no-op logger and the argument builders
  Autobahn calls (``hltype``, ``hlval``, ``pformat`` in its websocket
  modules) are cheap stand-ins: with nothing logged, nothing they return is
  ever read. Everything else (framing, parsing, UTF-8 checks, handshakes) is
  stock Autobahn.

It listens with a backlog of 128, as gevent's servers do (Twisted's default
is 50). No router, no backend, no rate limits, no presence: what the stack costs
underneath improto. ``servers/stock_autobahn.py`` is the naive version.

    python autobahn_ceiling.py HOST PORT
"""

from __future__ import annotations

import json
import sys
from typing import Any

import autobahn.twisted.websocket as _abtw
import autobahn.websocket.protocol as _abproto
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor


class NoLog:
    """A txaio-style logger that drops everything, at the cost of one call."""

    def _drop(self, *args: Any, **kwargs: Any) -> None:
        return None

    debug = trace = info = warn = error = critical = failure = _drop


def _cheap(*args: Any, **kwargs: Any) -> str:
    return ""


for module in (_abproto, _abtw):
    for name in ("hltype", "hlval", "pformat"):
        if hasattr(module, name):
            setattr(module, name, _cheap)


class ChatProtocol(WebSocketServerProtocol):
    log = NoLog()  # type: ignore[assignment]
    name = ""

    def onConnect(self, request):
        self.name = request.path.rsplit("/", 1)[-1]
        return None

    def onOpen(self):
        self.factory.users[self.name] = self
        self.factory.clients.add(self)

    def onMessage(self, payload, isBinary):
        obj = json.loads(payload)
        if "to_user" in obj:
            peer = self.factory.users.get(obj["to_user"])
            if peer is not None:
                peer.sendMessage(
                    json.dumps({"msg": obj.get("msg"), "from_user": self.name}).encode()
                )
            return
        data = json.dumps({"username": obj.get("username"), "msg": obj.get("msg")}).encode()
        prepared = self.factory.prepareMessage(data)
        for client in self.factory.clients:
            if client is not self:
                client.sendPreparedMessage(prepared)

    def onClose(self, wasClean, code, reason):
        self.factory.clients.discard(self)
        if self.factory.users.get(self.name) is self:
            del self.factory.users[self.name]


class ChatFactory(WebSocketServerFactory):
    protocol = ChatProtocol
    log = NoLog()  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.users: dict[str, ChatProtocol] = {}
        self.clients: set[ChatProtocol] = set()


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    factory = ChatFactory()
    reactor.listenTCP(port, factory, backlog=128, interface=host)
    reactor.run()


if __name__ == "__main__":
    main()
