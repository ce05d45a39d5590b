"""
improto's performance targets, measured against baselines in the same run.

    python benchmarks/run.py            # full run, under 5 minutes
    python benchmarks/run.py --quick    # about a minute
    python benchmarks/run.py --only fanout,churn --servers improto,seed-003
    python benchmarks/run.py --peers    # improto vs its peers, compiled generator (peers.py)
    python benchmarks/run.py --smoke    # the same with tiny counts (tests/test_benchmarks_smoke.py)

Servers (each started fresh for each scenario, pinned to CPU 0):

* ``improto``: ``twistd -n improto --rate 0``, in-memory backend.
* ``stock-autobahn``: the seeds' chat on stock Autobahn, naive broadcast
  (``servers/stock_autobahn.py``).
* ``seed-003`` / ``seed-004``: the seeds' Flask + gevent-websocket servers
  (``seed_servers/``), in their own venv of pinned versions, created under
  ``$IMPROTO_CACHE`` (default ``~/.cache/improto``) on first use.

The load generator (``loadgen.py``) runs in this process, pinned to CPU 1.
Ratios are against the seeds measured in this run; the micro-benchmark
(``micro.py``) compares stock Autobahn with improto's quiet mixin on a
StringTransport. Nothing here asserts on time: it prints numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import loadgen  # noqa: E402

SERVERS = ["improto", "stock-autobahn", "seed-003", "seed-004"]
#: Accepted by --servers but not run by default: improto with history off
#: (--history-size 0), to compare against "improto" (history on, 200).
EXTRA_SERVERS = ["improto-nohistory"]
SCENARIOS = ["fanout", "private", "churn", "memory"]
SEEDS = ["seed-003", "seed-004"]
RUNNERS: dict[str, Callable[..., Coroutine[Any, Any, dict[str, Any]]]] = {
    "fanout": loadgen.fanout, "private": loadgen.private, "churn": loadgen.churn,
    "memory": loadgen.idle_memory,
}

#: Per-server process and URL path for each kind of scenario.
GROUP_SEED = {"seed-003": ("chat_003.py", "/{}"), "seed-004": ("chat_004.py", "/ws/{}")}
PRIVATE_SEED = {"seed-003": ("one_chat_003.py", "/{}"), "seed-004": ("one_chat_004.py", "/ws/{}")}


def params(quick: bool) -> dict[str, dict[str, Any]]:
    if quick:
        return {
            "fanout": dict(receivers=100, probes=10, rate=50.0, latency_seconds=1.0,
                           blast=500, blast_timeout=8.0),
            "private": dict(pairs=25, window=8, duration=1.0, latency_pairs=5,
                            latency_seconds=0.7),
            "churn": dict(concurrency=30, duration=1.0, latency_seconds=0.7),
            "memory": dict(connections=500),
        }
    return {
        "fanout": dict(receivers=200, probes=20, rate=50.0, latency_seconds=2.0,
                       blast=1500, blast_timeout=12.0),
        "private": dict(pairs=50, window=8, duration=3.0, latency_pairs=5,
                        latency_seconds=2.0),
        "churn": dict(concurrency=30, duration=3.0, latency_seconds=2.0),
        "memory": dict(connections=2000),
    }


def describe(scenario: str, p: dict[str, Any]) -> str:
    if scenario == "fanout":
        return f"group fan-out, {p['receivers']} receivers"
    if scenario == "private":
        return f"private msgs, {p['pairs']} pairs"
    if scenario == "churn":
        return f"conn churn, {p['concurrency']} parallel"
    return f"idle memory, {p['connections']} conns"


def server_for(name: str, scenario: str, seed_py: Path | None, port: int,
               logdir: Path) -> tuple[harness.Server, Callable[[str], str]]:
    log = logdir / f"{name}-{scenario}.log"
    if name == "improto":
        return harness.Server(name, harness.improto_argv(port), port, log), "/ws/{}".format
    if name == "improto-nohistory":
        argv = harness.improto_argv(port, "--history-size", "0")
        return harness.Server(name, argv, port, log), "/ws/{}".format
    if name == "stock-autobahn":
        return harness.Server(name, harness.stock_autobahn_argv(port), port, log), "/{}".format
    assert seed_py is not None
    script, path = (PRIVATE_SEED if scenario == "private" else GROUP_SEED)[name]
    return harness.Server(name, harness.seed_argv(seed_py, script, port), port, log), path.format


async def run_scenario(scenario: str, port: int, path: Callable[[str], str], pid: int | None,
                       p: dict[str, Any]) -> dict[str, Any]:
    return await RUNNERS[scenario](port, path, pid, **p)


def run_micro(quick: bool) -> list[dict[str, Any]] | str:
    argv = [sys.executable, str(harness.HERE / "micro.py"), "--json"] + (["--quick"] if quick else [])
    proc = subprocess.run(argv, capture_output=True, text=True, preexec_fn=harness.pin_to_server_cpu,
                          cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        return proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- output -----------------------------------------------------------------------------


def fmt_num(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    if unit == "KiB/conn":
        return f"{x:,.1f} {unit}"
    return f"{x:,.0f} {unit}"


def fmt_ms(x: float | None) -> str:
    return "-" if x is None else (f"{x:.2f}" if x < 10 else f"{x:.1f}")


def fmt_us(x: float | None) -> str:
    return "-" if x is None else (f"{x:.1f}" if x < 100 else f"{x:,.0f}")


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.0f}%"


def table(results: list[dict[str, Any]]) -> str:
    header = ["scenario", "server", "result", "p50 ms", "p99 ms", "srv CPU", "srv µs/op",
              "gen CPU", "vs seed-003", "vs seed-004"]
    rows = [header]
    by_key = {(r["scenario"], r["server"]): r for r in results}
    for r in results:
        res = r.get("result", {})
        if "error" in res:
            rows.append([r["label"], r["server"], "ERROR: " + res["error"][:60]] + [""] * 7)
            continue
        ratios = []
        for seed in SEEDS:
            base = by_key.get((r["scenario"], seed), {}).get("result", {})
            if r["server"] == seed:
                ratios.append("1.00x")
            elif base.get("throughput"):
                ratios.append(f"{res['throughput'] / base['throughput']:.2f}x")
            else:
                ratios.append("-")
        flag = "" if res.get("complete", True) else " (timeout)"
        if res.get("errors"):
            flag += f" ({res['errors']} errors)"
        rows.append([
            r["label"], r["server"], fmt_num(res.get("throughput"), res.get("unit", "")) + flag,
            fmt_ms(res.get("p50_ms")), fmt_ms(res.get("p99_ms")),
            fmt_pct(res.get("server_cpu")), fmt_us(res.get("server_us_per_op")),
            fmt_pct(res.get("client_cpu")), *ratios,
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = set(range(2, len(header)))
    lines = []
    for n, row in enumerate(rows):
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def micro_table(rows: list[dict[str, Any]] | str) -> str:
    if isinstance(rows, str):
        return f"micro-benchmark failed: {rows}"
    import micro

    return micro.format_rows(rows)


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    if "--peers" in sys.argv[1:] or "--smoke" in sys.argv[1:]:
        import peers_report

        sys.exit(peers_report.main(sys.argv[1:]))
    parser = argparse.ArgumentParser(description="improto benchmarks (see benchmarks/README.md)")
    parser.add_argument("--quick", action="store_true", help="about one minute")
    parser.add_argument("--peers", action="store_true",
                        help="improto vs its peers instead (see peers.py; --peers --help)")
    parser.add_argument("--only", help=f"comma-separated scenarios of {','.join(SCENARIOS)}")
    parser.add_argument("--servers", help=f"comma-separated servers of {','.join(SERVERS + EXTRA_SERVERS)}")
    parser.add_argument("--no-micro", action="store_true", help="skip the micro-benchmark")
    parser.add_argument("--json", metavar="FILE", help="also write all results as JSON")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs")
    parser.add_argument("--no-boost", action="store_true",
                        help="do not give the benchmark priority over other work (see harness.boost)")
    args = parser.parse_args()
    scenarios = args.only.split(",") if args.only else SCENARIOS
    servers = args.servers.split(",") if args.servers else SERVERS
    for s in scenarios:
        if s not in SCENARIOS:
            parser.error(f"unknown scenario {s!r}")
    for s in servers:
        if s not in SERVERS + EXTRA_SERVERS:
            parser.error(f"unknown server {s!r}")

    started = time.monotonic()
    machine = harness.MachineLoad()
    where = harness.check_improto()
    print(f"improto under test: {where}", flush=True)
    seed_py = harness.seed_python() if any(s in SEEDS for s in servers) else None
    priority = harness.boost(not args.no_boost)
    harness.pin_self_to_client_cpu()
    p_all = params(args.quick)
    # The idle-memory scenario holds its connections (and the server one
    # socket per connection): both sides need that many descriptors.
    wanted = p_all["memory"]["connections"]
    limit = harness.raise_open_files(wanted + 500)
    if limit < wanted + 100:
        p_all["memory"]["connections"] = max(100, limit - 200)
        print(f"open-file limit {limit}: idle memory measured with "
              f"{p_all['memory']['connections']} connections", flush=True)
    logdir = Path(tempfile.mkdtemp(prefix="improto-bench-"))
    cpus = os.cpu_count()
    setup = (f"servers on CPU {harness.SERVER_CPU}, load generator on CPU {harness.CLIENT_CPU}"
             if harness.can_pin() else "no CPU pinning (fewer than 2 CPUs)")
    setup += f"; {priority}"
    print(f"python {platform.python_version()}, {cpus} CPUs; {setup}", flush=True)

    micro_rows: list[dict[str, Any]] | str = []
    if not args.no_micro:
        print("micro-benchmark (StringTransport) ...", flush=True)
        micro_rows = run_micro(args.quick)

    results: list[dict[str, Any]] = []
    for scenario in scenarios:
        p = p_all[scenario]
        for name in servers:
            port = harness.free_port()
            server, path = server_for(name, scenario, seed_py, port, logdir)
            label = describe(scenario, p)
            print(f"{label:<32} {name:<15} ...", end=" ", flush=True)
            t0 = time.monotonic()
            try:
                with harness.running(server):
                    res = asyncio.run(run_scenario(scenario, port, path, server.pid, p))
            except Exception as e:  # report and go on with the other servers
                res = {"error": f"{type(e).__name__}: {e}"}
            gc.collect()
            results.append({"scenario": scenario, "server": name, "label": label,
                            "params": p, "result": res})
            if "error" in res:
                print(f"ERROR {res['error'][:200]}", flush=True)
            else:
                print(f"{fmt_num(res['throughput'], res['unit'])} "
                      f"({time.monotonic() - t0:.1f}s)", flush=True)

    print()
    print(table(results))
    if micro_rows:
        print()
        print("Micro-benchmark (micro.py): one process on a StringTransport, no sockets.")
        print(micro_table(micro_rows))
    print()
    print("vs seed-*: result / the seed's result in this run (idle memory: KiB per connection, "
          "lower is better).\nsrv CPU, gen CPU: share of one core used by the server / the load "
          "generator while measuring;\nsrv µs/op: server CPU time per delivered message or per "
          "connection (less sensitive to other load).")
    print(f"machine: {machine.describe()}")
    print(f"total {time.monotonic() - started:.0f}s; server logs in {logdir}"
          if args.keep_logs else f"total {time.monotonic() - started:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "micro": micro_rows}, indent=1))
    if not args.keep_logs:
        for f in logdir.iterdir():
            f.unlink()
        logdir.rmdir()


if __name__ == "__main__":
    main()
