"""
Run improto exactly as deployed (``twistd -n improto``), for the benchmarks.

    python improto_server.py HOST PORT [--profile OUT.prof] [--stock-autobahn] [--tcp-nodelay]
                             [--backend URL] [--workers N] [--backlog N]

``--profile FILE``: SIGUSR1 starts cProfile (clock: process CPU time, or
wall with ``--profile-clock wall``), SIGUSR2 stops it and writes FILE. ``--stock-autobahn`` undoes
``improto.web.quiet``: every method the mixin re-states is pointed
back at Autobahn's own, to measure what the mixin buys ("before").
"""

from __future__ import annotations

import argparse
import sys


def use_stock_autobahn() -> None:
    from autobahn.twisted.websocket import WebSocketServerProtocol

    from improto import websocket
    from improto.web.quiet import QuietLoggingMixin

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


def use_tcp_nodelay() -> None:
    """Experiment: set TCP_NODELAY on chat connections (Autobahn means to, see README)."""
    from improto import websocket

    class NoDelayChatProtocol(websocket.ChatServerProtocol):
        def connectionMade(self) -> None:
            try:
                self.transport.setTcpNoDelay(True)
            except Exception:
                pass
            super().connectionMade()

    websocket.ChatServerFactory.protocol = NoDelayChatProtocol


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--profile", help="SIGUSR1/SIGUSR2 start/stop cProfile; stats to this file")
    parser.add_argument("--profile-clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--stock-autobahn", action="store_true")
    parser.add_argument("--tcp-nodelay", action="store_true")
    parser.add_argument("--rate", default="0")
    parser.add_argument("--backend", help="twistd improto --backend (default: memory)")
    parser.add_argument("--workers", help="twistd improto --workers, where it has that option")
    parser.add_argument("--backlog", help="listen backlog (Twisted's default is 50)")
    args = parser.parse_args()
    if args.stock_autobahn:
        use_stock_autobahn()
    if args.tcp_nodelay:
        use_tcp_nodelay()
    from twisted.scripts.twistd import run

    sys.argv = [
        "twistd", "-n", "--pidfile=", "improto",
        "--port", f"tcp:{args.port}:interface={args.host}"
        + (f":backlog={args.backlog}" if args.backlog else ""), "--rate", args.rate,
    ]
    if args.backend:
        sys.argv += ["--backend", args.backend]
    if args.workers:
        sys.argv += ["--workers", args.workers]
    if args.profile:
        start_profiler_on_signal(args.profile, args.profile_clock)
    run()


def start_profiler_on_signal(path: str, clock: str) -> None:
    """SIGUSR1 starts cProfile, SIGUSR2 stops it and writes ``path``."""
    import cProfile
    import signal
    import time

    timer = time.process_time if clock == "cpu" else time.perf_counter
    profiler = cProfile.Profile(timer)

    def start(signum: int, frame: object) -> None:
        profiler.enable()

    def stop(signum: int, frame: object) -> None:
        profiler.disable()
        profiler.dump_stats(path + ".tmp")
        import os

        os.replace(path + ".tmp", path)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


if __name__ == "__main__":
    main()
