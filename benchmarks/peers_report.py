"""
The ``--peers`` command: runs ``peers.run_all``, prints the table, the
ratios of every improto row against every peer and the generator cap check,
and writes them with the machine's description to ``RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cload
import harness
import peers

Table = dict[tuple[str, str], dict[str, Any]]


def fmt_value(key: str, x: float | None) -> str:
    if x is None:
        return "-"
    if key.endswith("-lat"):
        return f"{x * 100:.0f}% deliv"
    if key == "memory":
        return f"{x:,.1f} {peers.UNITS[key]}"
    return f"{x:,.0f} {peers.UNITS[key]}"


def fmt_ms(x: float | None) -> str:
    return "-" if x is None else (f"{x:.2f}" if x < 10 else f"{x:.1f}")


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.0f}%"


def labels(p: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {key: tmpl.format(**p[kind]) for key, kind, tmpl in peers.ROWS}


def render(header: list[str], rows: list[list[str]], left: int = 2) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for n, row in enumerate([header, *rows]):
        cells = [c.ljust(widths[i]) if i < left else c.rjust(widths[i]) for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main_table(table: Table, lab: peers.Lab, servers: list[str],
               p: dict[str, dict[str, Any]], kinds: list[str]) -> str:
    header = ["scenario", "server", "result", "p50 ms", "p99 ms", "srv CPU", "gen CPU", "spread",
              "notes"]
    rows = []
    names = labels(p)
    for key, kind, _ in peers.ROWS:
        if kind not in kinds:
            continue
        for s in servers:
            cell = table.get((key, s))
            na = lab.unavailable(s)
            if not na and key not in peers.ONLY_ROWS.get(s, {key}):
                rows.append([names[key], lab.display(s), *["-"] * 6, "not measured for it"])
                continue
            if na or cell is None or "error" in cell:
                why = na or (cell or {}).get("error", "not measured")
                rows.append([names[key], lab.display(s), why if na else "ERROR", "-", "-", "-",
                             "-", "-", "" if na else why[:70]])
                continue
            spread = "-" if cell["spread"] is None else f"±{cell['spread'] * 100:.0f}%"
            tcp = cell.get("tcp", {})
            if tcp.get("ListenOverflows") or tcp.get("RetransSegs"):
                cell["flags"] = [*cell["flags"], "machine-wide: "
                                 f"{tcp.get('RetransSegs', 0)} retransmits, "
                                 f"{tcp.get('ListenOverflows', 0)} listen overflows"]
            rows.append([names[key], lab.display(s), fmt_value(key, cell["value"]),
                         fmt_ms(cell["p50"]), fmt_ms(cell["p99"]), fmt_pct(cell["srv"]),
                         fmt_pct(cell["gen"]), spread, "; ".join(cell["flags"])[:80]])
    return render(header, rows)


#: Ratio rows: (label, table row, metric, higher is better).
RATIOS = [
    ("fan-out deliveries/s", "fanout-tput", "value", True),
    ("fan-out latency p50", "fanout-lat", "p50", False),
    ("fan-out latency p99", "fanout-lat", "p99", False),
    ("private msgs/s", "private-tput", "value", True),
    ("private latency p50", "private-lat", "p50", False),
    ("private latency p99", "private-lat", "p99", False),
    ("idle KiB/conn", "memory", "value", False),
    ("handshakes/s", "handshake", "value", True),
]


def advantage(table: Table, mine: str, peer: str, key: str, metric: str,
              higher: bool) -> float | None:
    a = table.get((key, mine), {}).get(metric)
    b = table.get((key, peer), {}).get(metric)
    if not a or not b:
        return None
    return a / b if higher else b / a


def ratio_table(table: Table, lab: peers.Lab, servers: list[str]) -> tuple[str, list[str]]:
    """Ratios (>1: the improto row is better) and a list of where it loses."""
    mine = [s for s in servers if s in peers.IMPROTO and not lab.unavailable(s)]
    others = [s for s in servers if s not in peers.IMPROTO]
    header = ["improto row", "metric", *others]
    rows, losses = [], []
    for s in mine:
        for label, key, metric, higher in RATIOS:
            cells = []
            for o in others:
                r = advantage(table, s, o, key, metric, higher)
                cells.append("-" if r is None else f"{r:.2f}x" + ("*" if r < 1 else ""))
                if r is not None and r < 1:
                    losses.append(f"{lab.display(s)}: {label} {r:.2f}x vs {o}")
            if any(c != "-" for c in cells):
                rows.append([lab.display(s), label, *cells])
    return render(header, rows), losses


def cap_table(checks: list[dict[str, Any]], lab: peers.Lab) -> str:
    rows = []
    for c in checks:
        if "error" in c:
            rows.append([c["row"], lab.display(c["server"]), "ERROR " + c["error"], "", "", "", ""])
            continue
        key = c["row"]
        rows.append([key, lab.display(c["server"]), fmt_value(key, c["uncapped"]),
                     fmt_pct(c["uncapped_gen"]), fmt_value(key, c["capped"]),
                     fmt_pct(c["capped_gen"]), f"{c['capped'] / c['uncapped']:.2f}"])
    header = ["row", "server", "generator free", "gen CPU", f"gen capped {checks[0]['cap']:.0%}"
              if checks else "capped", "gen CPU", "capped/free"]
    return render(header, rows)


def machine() -> dict[str, str]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for mod in ("twisted", "autobahn", "websockets"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except Exception:
            pass
    return {"nproc": str(os.cpu_count()), "cpu": model, "python": platform.python_version(),
            "kernel": platform.release(), "versions": ", ".join(versions)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="run.py --peers", description=peers.__doc__.split("\n")[1])
    ap.add_argument("--peers", action="store_true", help="(this mode)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny counts, one run, improto + autobahn-ceiling (for the smoke test)")
    ap.add_argument("--runs", type=int, help="runs per server and scenario (default 3; smoke 1)")
    ap.add_argument("--servers", help="comma-separated, of " + ",".join(peers.SERVERS + peers.OPTIONAL))
    ap.add_argument("--only", help="comma-separated scenarios, of " + ",".join(peers.KINDS))
    ap.add_argument("--no-cap-check", action="store_true", help="skip the capped-generator re-run")
    ap.add_argument("--results", metavar="FILE",
                    help="write the report here (default: benchmarks/RESULTS.md on a full run)")
    ap.add_argument("--json", metavar="FILE", help="also write every measurement as JSON")
    ap.add_argument("--no-boost", action="store_true", help="do not raise the benchmark's priority")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "smoke" if args.smoke else "full"
    p = peers.PARAMS[mode]
    runs = args.runs or (1 if args.smoke else 3)
    default = ["improto", "autobahn-ceiling"] if args.smoke else peers.SERVERS
    servers = args.servers.split(",") if args.servers else default
    for s in servers:
        if s not in peers.SERVERS + peers.OPTIONAL:
            sys.exit(f"unknown server {s!r}")
    kinds = args.only.split(",") if args.only else peers.KINDS
    for k in kinds:
        if k not in peers.KINDS:
            sys.exit(f"unknown scenario {k!r}")
    command = "python benchmarks/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    started = time.monotonic()
    load = harness.MachineLoad()
    print(f"improto under test: {harness.check_improto()}", flush=True)
    wsload = cload.binary()  # build before anything is timed
    seed_py = None
    if any(s.startswith("seed-") for s in servers):
        try:
            seed_py = harness.seed_python()
        except Exception as e:
            print(f"seeds unavailable: {e}", flush=True)
    priority = harness.boost(not args.no_boost)
    harness.pin_self_to_client_cpu()
    limit = harness.raise_open_files(p["memory"]["n"] + 1000)
    if limit < p["memory"]["n"] + 200:
        p["memory"]["n"] = max(50, limit - 300)
        print(f"open-file limit {limit}: idle memory with {p['memory']['n']} connections")
    redis = shutil.which("redis-server") is not None or os.path.exists("/usr/bin/redis-server")
    workers = (peers.workers_option() if {"improto-2w", "improto-cluster"} & set(servers)
               else False)
    logdir = Path(tempfile.mkdtemp(prefix="improto-peers-"))
    lab = peers.Lab(logdir, seed_py, workers, redis)
    est = peers.estimate_seconds([s for s in servers if not lab.unavailable(s)], p, runs, kinds)
    if not (args.no_cap_check or args.smoke):
        est += peers.estimate_seconds(["one"], p, 1, ["fanout", "private", "handshake"]) * 4
    print(f"generator {wsload.name}; python {platform.python_version()}, {os.cpu_count()} CPUs; "
          f"servers on CPU {harness.SERVER_CPU}, generator on CPU {harness.CLIENT_CPU}; {priority}")
    print(f"{len(servers)} servers x {len(kinds)} scenarios x {runs} runs: "
          f"expected about {est / 60:.1f} min", flush=True)

    table = peers.run_all(lab, servers, p, runs, kinds)
    checks = [] if args.no_cap_check or args.smoke else peers.cap_check(lab, table, servers, p)
    elapsed = time.monotonic() - started
    main_txt = main_table(table, lab, servers, p, kinds)
    ratio_txt, losses = ratio_table(table, lab, servers)
    print("\n" + main_txt + "\n\n" + ratio_txt)
    if checks:
        print("\ngenerator free, then capped (wsload -C), back to back: the same result means "
              "it was not the bottleneck\n"
              + cap_table(checks, lab))
    print(f"\nmachine: {load.describe()}; total {elapsed:.0f}s (expected {est:.0f}s)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": command, "machine": machine(), "params": p, "runs": runs,
            "table": [{"row": k[0], "server": k[1], **v} for k, v in table.items()],
            "cap_check": checks}, indent=1))
    out = args.results or (None if args.smoke else str(harness.HERE / "RESULTS.md"))
    if out:
        write_results(Path(out), command, machine(), load.describe(), elapsed, runs, main_txt,
                      ratio_txt, losses, cap_table(checks, lab) if checks else "", lab)
        print(f"written to {out}")
    for f in sorted(logdir.rglob("*"), reverse=True):
        f.rmdir() if f.is_dir() else f.unlink()
    logdir.rmdir()
    return 0


def write_results(path: Path, command: str, m: dict[str, str], load: str, elapsed: float,
                  runs: int, main_txt: str, ratio_txt: str, losses: list[str], cap_txt: str,
                  lab: peers.Lab) -> None:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    two = lab.display("improto-2w")
    text = f"""# Benchmark results: improto and its peers

Written by `{command}` ({when}, {elapsed / 60:.1f} min). Medians of {runs} run{"s" if runs != 1 else ""},
every server and scenario interleaved in the same run; `spread` is half the
range of the runs over the median. See `README.md` ("Peers") for the method.

Machine: {m['nproc']} CPUs ({m['cpu']}), Linux {m['kernel']}, CPython {m['python']};
{m['versions']}. During the run: {load}.

```
{main_txt}
```

Ratios: how many times better the improto row is than each peer
(throughput: improto ÷ peer; latency and memory: peer ÷ improto); `*` marks
where improto loses.

```
{ratio_txt}
```

Where an improto row loses: {"; ".join(losses) if losses else "nowhere"}.
"""
    if cap_txt:
        text += f"""
Each throughput scenario measured again twice, back to back: the load
generator free, then capped to half a core (`wsload -C 0.5`), on the fastest
server whose generator has a core of its own and on the server where the
generator used the most CPU: the same number (within the run-to-run spread)
means the generator was not what limited it.

```
{cap_txt}
```
"""
    text += f"""
Notes: `{two}` is {"`twistd improto --workers 2`" if lab.workers else
"emulated (no `--workers` yet): two twistd nodes on two ports, one per core, sharing one Redis; the generator splits connections between them and shares the cores (its CPU is in `gen CPU`)"}.
`{lab.display("improto-cluster")}` is the same on a private Redis Cluster of
three masters (no replicas), measured for fan-out and private throughput only.
`improto (Redis)` runs improto and its redis-server together on the server
core; `srv CPU` is the sum of the server's processes (Redis included).
"""
    path.write_text(text)
