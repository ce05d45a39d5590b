"""
Baseline: the seeds' chat on plain, stock Autobahn (Twisted), done naively.

Group and private chat in the seed 003 dialect on ``/<name>`` or
``/ws/<name>`` (the last path segment names the user):
``{"username", "msg"}`` goes to every other connection as
``{"username", "msg"}``, one ``sendMessage`` per receiver (framed each
time); ``{"to_user", "msg"}`` goes to that user as ``{"msg", "from_user"}``.
Stock ``WebSocketServerProtocol``, stock factory options, no router, no
backend: what a straightforward Autobahn port of the seeds costs. (Listen
backlog 128, as gevent's servers have, instead of Twisted's 50.)

    python stock_autobahn.py HOST PORT
"""

from __future__ import annotations

import json
import sys

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor


class ChatProtocol(WebSocketServerProtocol):
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
        for client in self.factory.clients:
            if client is not self:
                client.sendMessage(data)

    def onClose(self, wasClean, code, reason):
        self.factory.clients.discard(self)
        if self.factory.users.get(self.name) is self:
            del self.factory.users[self.name]


class ChatFactory(WebSocketServerFactory):
    protocol = ChatProtocol

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
