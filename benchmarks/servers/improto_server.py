"""
Run improto exactly as deployed (``twistd -n improto``), for the benchmarks.

    python improto_server.py HOST PORT [--profile OUT.prof] [--stock-autobahn]

``--profile`` runs the whole server under cProfile and writes the stats
when it stops (SIGINT/SIGTERM). ``--stock-autobahn`` undoes
``improto._autobahn_quiet``: every method the mixin re-states is pointed
back at Autobahn's own, to measure what the mixin buys ("before").
"""

from __future__ import annotations

import argparse
import sys


def use_stock_autobahn() -> None:
    from autobahn.twisted.websocket import WebSocketServerProtocol

    from improto import websocket
    from improto._autobahn_quiet import QuietLoggingMixin

    class StockAutobahnChatProtocol(websocket.ChatServerProtocol):
        pass

    for cls in QuietLoggingMixin.__mro__:
        if cls is object:
            continue
        for name, value in vars(cls).items():
            if callable(value) and not name.startswith("__") and hasattr(
                WebSocketServerProtocol, name
            ):
                setattr(StockAutobahnChatProtocol, name, getattr(WebSocketServerProtocol, name))
    websocket.ChatServerFactory.protocol = StockAutobahnChatProtocol


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--profile")
    parser.add_argument("--stock-autobahn", action="store_true")
    parser.add_argument("--rate", default="0")
    args = parser.parse_args()
    if args.stock_autobahn:
        use_stock_autobahn()
    from twisted.scripts.twistd import run

    sys.argv = [
        "twistd", "-n", "--pidfile=", "improto",
        "--port", f"tcp:{args.port}:interface={args.host}", "--rate", args.rate,
    ]
    if args.profile:
        import cProfile
        import signal

        # twistd stops the reactor on SIGTERM/SIGINT and then returns here.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        profiler = cProfile.Profile()
        try:
            profiler.runcall(run)
        finally:
            profiler.dump_stats(args.profile)
    else:
        run()


if __name__ == "__main__":
    main()
