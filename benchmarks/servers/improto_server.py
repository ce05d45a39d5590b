"""
Run improto exactly as deployed (``twistd -n improto``), for the benchmarks.

    python improto_server.py HOST PORT [--profile OUT.prof] [--stock-autobahn] [--tcp-nodelay]
                             [--backend URL] [--workers N] [--backlog N] [--history-size N]

``--profile FILE``: SIGUSR1 starts cProfile (clock: process CPU time, or
wall with ``--profile-clock wall``), SIGUSR2 stops it and writes FILE. ``--stock-autobahn`` undoes
``improto.web.quiet`` (``quiet.uninstall()``): the same server on stock
Autobahn, to measure what it buys ("before"). ``--tcp-nodelay`` is a no-op
kept for old command lines: twisted.web's HTTP channel sets TCP_NODELAY on
every accepted socket (``improto.web.details``).
``--history-size N`` is passed to twistd: ``0`` turns history off (plain
at-most-once pub/sub), for the history on/off comparison.
``IMPROTO_EXTRA`` in the environment: more ``twistd improto`` options,
space-separated (e.g. ``--gc-threshold 0``), for A/B runs by hand.
``IMPROTO_BENCH_BUFFERED_WRITES=1`` in the environment (inherited from
``run.py``) turns off ``improto.web.flush`` (``flush.enabled = False``):
every broadcast buffered by ``transport.write`` as before that policy,
the "before" of its A/B runs.
"""

from __future__ import annotations

import argparse
import os
import sys


def use_stock_autobahn() -> None:
    """Undo improto's only Autobahn mitigation (lazy debug-log arguments)."""
    import improto.web.link  # noqa: F401 - installs the mitigation
    from improto.web import quiet

    quiet.uninstall()


def find_plugin() -> None:
    """Let twistd find the improto plugin of this tree when it is not installed
    as a wheel (an editable install does not put it in ``twisted/plugins``)."""
    from pathlib import Path

    import twisted.plugins

    plugins = Path(__file__).resolve().parents[2] / "plugins"
    if (plugins / "improto_twistd.py").exists() and str(plugins) not in twisted.plugins.__path__:
        twisted.plugins.__path__.append(str(plugins))


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
    parser.add_argument("--history-size", default=None, help="twistd improto --history-size (0 = off)")
    args = parser.parse_args()
    find_plugin()
    if args.stock_autobahn:
        use_stock_autobahn()
    if os.environ.get("IMPROTO_BENCH_BUFFERED_WRITES") == "1":
        from improto.web import flush

        flush.enabled = False
    from twisted.scripts.twistd import run

    sys.argv = [
        "twistd", "-n", "--pidfile=", "improto",
        "--port", f"tcp:{args.port}:interface={args.host}"
        + (f":backlog={args.backlog}" if args.backlog else ""), "--rate", args.rate,
        # The load generator is one address opening thousands of connections,
        # and its receivers share a few nicknames: lift the per-address and
        # per-user limits a public deployment keeps.
        "--max-connections-per-ip", "0", "--max-handshakes-per-ip", "0",
        "--max-connections-per-user", "0",
    ] + os.environ.get("IMPROTO_EXTRA", "").split()
    if args.backend:
        sys.argv += ["--backend", args.backend]
    if args.workers:
        sys.argv += ["--workers", args.workers]
    if args.history_size is not None:
        sys.argv += ["--history-size", args.history_size]
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
