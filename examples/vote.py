"""
The seed's live voting page (丑男投票系统), rebuilt on improto's embedding API.

A plain ``twisted.web`` site serves the page at ``/index``; a live feed at
``/message`` takes votes (the candidate id as a text frame, as the seed's
page sends it) and pushes ``{"cid": ..., "count": ...}`` to every viewer
through the router, so it works the same across several nodes.

    python examples/vote.py --port tcp:5000
"""

from __future__ import annotations

import argparse
import html
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, endpoints, task
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from improto import MemoryBackend, Router, feed_resource

CANDIDATES = {
    "1": {"name": "钢弹", "count": 0},
    "2": {"name": "铁锤", "count": 0},
    "3": {"name": "贝贝", "count": 100},
}

PAGE = """<!DOCTYPE html>
<html lang="zh-CN">
<head>
<meta charset="UTF-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>丑男投票系统</title>
<style>
  body {{ font-family: system-ui, sans-serif; max-width: 28rem; margin: 2rem auto; }}
  li {{ cursor: pointer; padding: .5rem; list-style: none; border-bottom: 1px solid #ddd; }}
  li span {{ float: right; font-weight: bold; }}
</style>
</head>
<body>
<h1>丑男投票系统</h1>
<ul>{items}</ul>
<script>
  var ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/message");
  ws.onmessage = function (event) {{
    var response = JSON.parse(event.data);
    var item = document.getElementById("id_" + response.cid);
    if (item) {{ item.querySelector("span").textContent = response.count; }}
  }};
  function vote(cid) {{ ws.send(cid); }}
</script>
</body>
</html>
"""


def render_page() -> bytes:
    items = "".join(
        f'<li onclick="vote(\'{cid}\')" id="id_{cid}">{html.escape(c["name"])}'
        f'<span>{c["count"]}</span></li>'
        for cid, c in CANDIDATES.items()
    )
    return PAGE.format(items=items).encode("utf-8")


class PageResource(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return render_page()


def make_vote_handler(router: Router) -> Callable[[str, Callable[[Any], None]], None]:
    def on_vote(cid: str, reply: Callable[[Any], None]) -> None:
        candidate = CANDIDATES.get(cid.strip())
        if candidate is None:
            # The seed crashed on an unknown id (KeyError); we answer the voter.
            reply({"type": "error", "code": "bad_message", "reason": f"No candidate {cid!r}."})
            return
        candidate["count"] += 1
        router.publish({"cid": cid.strip(), "count": candidate["count"]}, group="votes")

    return on_vote


def build_site(router: Router, reactor: Any) -> Site:
    root = Resource()
    root.putChild(b"", PageResource())
    root.putChild(b"index", PageResource())
    root.putChild(b"message", feed_resource(router, "votes", make_vote_handler(router), reactor=reactor))
    root.putChild(b"robots.txt", Data(b"User-agent: *\nDisallow:\n", "text/plain"))
    return Site(root)


def main(reactor: Any, port: str) -> Any:
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    backend = MemoryBackend()
    router = Router(backend)
    d = backend.start()
    d.addCallback(lambda _: endpoints.serverFromString(reactor, port).listen(build_site(router, reactor)))
    d.addCallback(lambda listening: print(f"voting page on {listening.getHost()}", flush=True))
    return d.addCallback(lambda _: defer.Deferred())  # serve until killed


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--port", default="tcp:5000", help="endpoint string (default tcp:5000)")
    task.react(main, [parser.parse_args().port])
