"""
Peer: the seeds' chat on the ``websockets`` library (asyncio), done the way
its documentation recommends.

Group and private chat in the seed 003 dialect; the last path segment names
the user: ``{"username", "msg"}`` goes to every other connection as
``{"username", "msg"}`` with ``websockets.asyncio.server.broadcast`` (frames
once, writes without waiting); ``{"to_user", "msg"}`` goes to that user as
``{"msg", "from_user"}``. A listen backlog of 128 (as gevent's servers have;
asyncio's default is 100); default settings otherwise (the load generator
does not offer permessage-deflate, so nothing is compressed).

    python websockets_peer.py HOST PORT
"""

from __future__ import annotations

import asyncio
import json
import sys

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

clients: set[ServerConnection] = set()
users: dict[str, ServerConnection] = {}


async def handler(ws: ServerConnection) -> None:
    name = ws.request.path.rsplit("/", 1)[-1] if ws.request else ""
    users[name] = ws
    clients.add(ws)
    try:
        async for message in ws:
            obj = json.loads(message)
            if "to_user" in obj:
                peer = users.get(obj["to_user"])
                if peer is not None:
                    await peer.send(json.dumps({"msg": obj.get("msg"), "from_user": name}))
                continue
            data = json.dumps({"username": obj.get("username"), "msg": obj.get("msg")})
            broadcast([c for c in clients if c is not ws], data)
    except ConnectionClosed:
        pass  # a client that went away without a close frame: nothing to report
    finally:
        clients.discard(ws)
        if users.get(name) is ws:
            del users[name]


async def main(host: str, port: int) -> None:
    async with serve(handler, host, port, backlog=128) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
