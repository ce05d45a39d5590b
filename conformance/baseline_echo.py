"""Stock Autobahn (Twisted) echo server: the reference agent for conformance runs.

improto's /echo route sends each message through its router and backend; this
server echoes in-process with nothing in between. Running the same wstest
cases against both tells how much of improto's time per case is its own
overhead (the 9.* timing ratios in gate.py) and gives a known-good report to
compare behaviours with.

The configuration is Autobahn's own testee server: permessage-deflate is
accepted when offered, and failByDrop=False so that failed connections still
get a closing handshake, which is what the suite's strict checks expect.

Usage: python conformance/baseline_echo.py --port 9001 [--interface 127.0.0.1]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)
from twisted.internet import reactor as _reactor
from twisted.python import log


class EchoProtocol(WebSocketServerProtocol):
    """Send every text/binary message back unchanged."""

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


def accept_deflate(offers: Sequence[object]) -> PerMessageDeflateOfferAccept | None:
    """Accept the first permessage-deflate offer (12.* and 13.* need it)."""
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


def make_factory(url: str) -> WebSocketServerFactory:
    factory = WebSocketServerFactory(url)
    factory.protocol = EchoProtocol
    factory.setProtocolOptions(failByDrop=False, perMessageCompressionAccept=accept_deflate)
    return factory


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--verbose", action="store_true", help="log Twisted events to stderr")
    args = parser.parse_args(argv)
    if args.verbose:
        log.startLogging(sys.stderr)
    factory = make_factory(f"ws://{args.interface}:{args.port}")
    reactor = cast(Any, _reactor)  # the global reactor's interfaces are untyped here
    reactor.listenTCP(args.port, factory, interface=args.interface)
    print(f"baseline echo listening on ws://{args.interface}:{args.port}/", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
