"""
improto against its peers, interleaved in one run: ``python benchmarks/run.py --peers``.

Servers (each started fresh for each scenario; a server alone on CPU 0, the
compiled load generator ``loadgen_c/wsload.c`` on CPU 1):

* ``improto``: ``twistd -n improto --rate 0``, in-memory backend;
* ``improto-redis``: the same with ``--backend redis://`` on a private
  ``redis-server`` (free port), both processes on CPU 0;
* ``improto-2w``: two workers on two cores sharing Redis. While
  ``twistd improto --help`` has no ``--workers``, emulated with two twistd
  nodes on two ports (one per core) sharing one Redis, the generator
  splitting connections between them and running wherever the scheduler
  puts it (its CPU is reported); without ``redis-server``, ``n/a``;
* ``improto-cluster``: the same two workers (or two nodes) with
  ``--backend redis-cluster://`` on a private Redis Cluster of three
  masters, no replicas, started for it on free loopback ports; fan-out and
  private throughput only (its other rows are ``-``);
* ``seed-003`` / ``seed-004``: the seeds' Flask + gevent-websocket servers;
* ``websockets``: ``servers/websockets_peer.py`` (``websockets.broadcast``);
* ``autobahn-ceiling``: ``servers/autobahn_ceiling.py``, plain Autobahn with a
  broadcast framed once and no debug-log formatting.

Scenarios (see ``PARAMS``): fan-out throughput and latency, private
throughput and latency, idle memory per connection, handshakes per second.
Each value is the median over ``--runs``; nothing asserts on time.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cload
import harness
from loadgen import server_rss_bytes

from improto.testing import cluster_port

SERVERS = ["improto", "improto-redis", "improto-2w", "improto-cluster", "seed-003", "seed-004",
           "websockets", "autobahn-ceiling"]
OPTIONAL = ["stock-autobahn"]
IMPROTO = ["improto", "improto-redis", "improto-2w", "improto-cluster"]
#: Servers measured in some rows only (the others show ``-``).
ONLY_ROWS = {"improto-cluster": {"fanout-tput", "private-tput"}}
KINDS = ["fanout", "private", "memory", "handshake"]
#: Table rows: (key, kind measured in, label template).
ROWS = [
    ("fanout-tput", "fanout", "fan-out throughput, {n} rx x {b} B"),
    ("fanout-lat", "fanout", "fan-out latency, {r:g} msg/s x {n} rx"),
    ("private-tput", "private", "private throughput, {n} pairs x {w}"),
    ("private-lat", "private", "private latency, {r:g} msg/s"),
    ("memory", "memory", "idle memory, {n} conns"),
    ("handshake", "handshake", "handshakes, {c} in flight"),
]
UNITS = {"fanout-tput": "deliv/s", "private-tput": "msg/s", "memory": "KiB/conn",
         "handshake": "conn/s"}

PARAMS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "fanout": {"n": 1000, "w": 16, "r": 10, "L": 1.5, "d": 2, "b": 64, "T": 90},
        "private": {"n": 200, "w": 16, "r": 2000, "L": 1.5, "d": 2, "b": 64, "T": 90},
        "handshake": {"c": 64, "d": 2, "T": 30},
        "memory": {"n": 5000},
    },
    "smoke": {
        "fanout": {"n": 20, "w": 4, "r": 20, "L": 0.3, "d": 0.3, "b": 64, "T": 30},
        "private": {"n": 10, "w": 4, "r": 200, "L": 0.3, "d": 0.3, "b": 64, "T": 30},
        "handshake": {"c": 8, "d": 0.3, "T": 15},
        "memory": {"n": 50},
    },
}
GROUP_SEED = {"seed-003": ("chat_003.py", "/"), "seed-004": ("chat_004.py", "/ws/")}
PRIVATE_SEED = {"seed-003": ("one_chat_003.py", "/"), "seed-004": ("one_chat_004.py", "/ws/")}
PEER_SCRIPTS = {"websockets": "websockets_peer.py", "autobahn-ceiling": "autobahn_ceiling.py",
                "stock-autobahn": "stock_autobahn.py"}


@dataclass
class Deployment:
    """What a started server offers the load generator."""

    ports: list[int]
    prefix: str
    cpu_pids: list[int]
    gen_cpus: set[int] | None = field(default_factory=lambda: {harness.CLIENT_CPU})


def workers_option() -> bool:
    """Whether ``twistd improto --help`` lists ``--workers``."""
    # The plugin path as servers/improto_server.py adds it: an editable
    # install does not put the plugin in twisted/plugins.
    code = ("import sys, twisted.plugins; "
            f"twisted.plugins.__path__.append({str(harness.REPO / 'plugins')!r}); "
            "from twisted.scripts.twistd import run; "
            "sys.argv = ['twistd', 'improto', '--help']; run()")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60, cwd=tempfile.gettempdir())
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--workers" in out.stdout


def improto_argv(port: int, *extra: str) -> list[str]:
    """
    ``twistd improto`` with a listen backlog of 128, as gevent's servers (the
    seeds) have: with 64 connects in flight Twisted's default of 50 overflows
    on a busy machine, and each dropped SYN costs a second (seen in
    ``TcpExtListenOverflows``).
    """
    return harness.improto_argv(port, "--backlog", "128", *extra)


def tcp_counters() -> dict[str, int]:
    """
    Machine-wide kernel counters that explain stalls: connections dropped
    from full accept queues (``TcpExt ListenOverflows``) and retransmitted
    segments (``Tcp RetransSegs``; on loopback only drops cause them).
    """
    found: dict[str, int] = {}
    for path, section, names in (("/proc/net/netstat", "TcpExt:", ("ListenOverflows",)),
                                 ("/proc/net/snmp", "Tcp:", ("RetransSegs",))):
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for head, values in zip(lines[::2], lines[1::2], strict=False):
            if head.startswith(section):
                row = dict(zip(head.split()[1:], values.split()[1:], strict=False))
                found.update({n: int(row[n]) for n in names if n in row})
    return found


def redis_cli(port: int, *args: str, timeout: float = 30) -> str:
    binary = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    return subprocess.run([binary, "-h", "127.0.0.1", "-p", str(port), *args], check=True,
                          capture_output=True, text=True, timeout=timeout).stdout


def cluster_ok(ports: list[int], timeout: float = 30) -> None:
    """Polls ``CLUSTER INFO`` on every node until all say ``cluster_state:ok``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            if all("cluster_state:ok" in redis_cli(p, "CLUSTER", "INFO", timeout=5)
                   for p in ports):
                return
        time.sleep(0.1)
    raise RuntimeError(f"Redis Cluster on {ports} not ok within {timeout}s")


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        with contextlib.suppress(OSError):
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
    return found


class Lab:
    """Starts the servers under test; knows which exist on this machine."""

    def __init__(self, logdir: Path, seed_py: Path | None, workers: bool, redis: bool) -> None:
        self.logdir, self.seed_py, self.workers, self.redis = logdir, seed_py, workers, redis

    def display(self, name: str) -> str:
        if name == "improto-2w":
            if self.workers:
                return "improto --workers 2 +Redis"
            return "improto 2 nodes+Redis" if self.redis else "improto 2 workers"
        if name == "improto-cluster":
            two = "--workers 2" if self.workers else "2 nodes"
            return f"improto {two}+Redis Cluster"
        return {"improto": "improto (memory)", "improto-redis": "improto (Redis)"}.get(name, name)

    def unavailable(self, name: str) -> str | None:
        if name == "improto-cluster" and not (self.redis and shutil.which("redis-cli")):
            return "n/a (no redis-server / redis-cli)"
        if name in ("improto-redis", "improto-2w") and not self.redis:
            return "n/a (no --workers yet)" if name == "improto-2w" else "n/a (no redis-server)"
        if name.startswith("seed-") and self.seed_py is None:
            return "n/a (no seed venv)"
        return None

    def _server(self, stack: contextlib.ExitStack, tag: str, argv: list[str], port: int,
                cpus: set[int] | None | str = "server") -> harness.Server:
        server = harness.Server(tag, argv, port, self.logdir / f"{tag}.log", cpus)
        stack.enter_context(harness.running(server))
        assert server.pid is not None
        return server

    def _redis(self, stack: contextlib.ExitStack, tag: str,
               cpus: set[int] | None | str) -> tuple[str, int]:
        """A private redis-server: its URL and pid."""
        port = harness.free_port()
        workdir = Path(tempfile.mkdtemp(prefix="redis-", dir=self.logdir))
        pid = self._server(stack, f"{tag}-redis", harness.redis_argv(port, workdir), port, cpus).pid
        return f"redis://127.0.0.1:{port}/0", pid  # type: ignore[return-value]

    def _redis_cluster(self, stack: contextlib.ExitStack, tag: str) -> tuple[str, list[int]]:
        """A private Redis Cluster of three masters, no replicas: its URL and pids."""
        ports = [cluster_port() for _ in range(3)]
        pids = []
        for port in ports:
            workdir = Path(tempfile.mkdtemp(prefix=f"cluster-{port}-", dir=self.logdir))
            argv = [*harness.redis_argv(port, workdir), "--cluster-enabled", "yes",
                    "--cluster-config-file", f"nodes-{port}.conf"]
            pids.append(self._server(stack, f"{tag}-redis-{port}", argv, port, None).pid)
        redis_cli(ports[0], "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                  "--cluster-replicas", "0", "--cluster-yes")
        cluster_ok(ports)
        hosts = ",".join(f"127.0.0.1:{p}" for p in ports)
        return f"redis-cluster://{hosts}/", pids  # type: ignore[return-value]

    def _two(self, stack: contextlib.ExitStack, tag: str, url: str, port: int,
             others: list[int]) -> Deployment:
        """Two improto workers (``--workers 2``, or two nodes, one per core) on ``url``."""
        if self.workers:
            s = self._server(stack, tag, improto_argv(
                port, "--backend", url, "--workers", "2"), port, None)
            time.sleep(1.0)  # let the workers start before their pids are read
            return Deployment([port], "/ws/", [*descendants(s.pid), *others], None)  # type: ignore[arg-type]
        port2 = harness.free_port()
        a = self._server(stack, tag + "-a", improto_argv(port, "--backend", url),
                         port, {harness.SERVER_CPU})
        b = self._server(stack, tag + "-b", improto_argv(port2, "--backend", url),
                         port2, {harness.CLIENT_CPU})
        return Deployment([port, port2], "/ws/", [a.pid, b.pid, *others], None)  # type: ignore[list-item]

    @contextlib.contextmanager
    def start(self, name: str, kind: str, tag: str) -> Iterator[Deployment]:
        with contextlib.ExitStack() as stack:
            port = harness.free_port()
            if name == "improto":
                s = self._server(stack, tag, improto_argv(port), port)
                yield Deployment([port], "/ws/", [s.pid])  # type: ignore[list-item]
            elif name == "improto-redis":
                url, rpid = self._redis(stack, tag, "server")
                s = self._server(stack, tag, improto_argv(port, "--backend", url), port)
                yield Deployment([port], "/ws/", [s.pid, rpid])  # type: ignore[list-item]
            elif name == "improto-2w":
                url, rpid = self._redis(stack, tag, None)
                yield self._two(stack, tag, url, port, [rpid])
            elif name == "improto-cluster":
                url, rpids = self._redis_cluster(stack, tag)
                yield self._two(stack, tag, url, port, rpids)
            elif name.startswith("seed-"):
                assert self.seed_py is not None
                script, prefix = (PRIVATE_SEED if kind == "private" else GROUP_SEED)[name]
                s = self._server(stack, tag, harness.seed_argv(self.seed_py, script, port), port)
                yield Deployment([port], prefix, [s.pid])  # type: ignore[list-item]
            else:
                argv = [sys.executable, str(harness.HERE / "servers" / PEER_SCRIPTS[name]),
                        "127.0.0.1", str(port)]
                s = self._server(stack, tag, argv, port)
                yield Deployment([port], "/", [s.pid])  # type: ignore[list-item]


def _cpu(block: dict[str, Any]) -> tuple[float | None, float | None]:
    srv = [x for x in block.get("srv_cpu", []) if x >= 0]
    return (sum(srv) if srv else None), block.get("gen_cpu")


def measure(lab: Lab, name: str, kind: str, p: dict[str, Any], tag: str,
            cap: float | None = None) -> dict[str, dict[str, Any]]:
    """One scenario against one freshly started server: {row key: values}."""
    with lab.start(name, kind, tag) as dep:
        if kind == "memory":
            time.sleep(0.3)
            with cload.holding(dep.ports, dep.prefix, p["n"], dep.gen_cpus) as open_all:
                time.sleep(0.5)
                before = [server_rss_bytes(pid) or 0 for pid in dep.cpu_pids]
                opened = open_all()
                time.sleep(1.0)
                after = [server_rss_bytes(pid) or 0 for pid in dep.cpu_pids]
            kib = (sum(after) - sum(before)) / p["n"] / 1024.0
            return {"memory": {"value": kib, "open_s": opened}}
        tcp0 = tcp_counters()
        res = cload.run(kind, dep.ports, dep.prefix, dep.cpu_pids, p, dep.gen_cpus, cap)
        tcp1 = tcp_counters()
    if "error" in res:
        raise RuntimeError(res["error"])
    srv, gen = _cpu(res["throughput_cpu"])
    flags: list[str] = []
    tcp = {name: tcp1[name] - tcp0[name] for name in tcp0 if name in tcp1}
    if res.get("stalled"):
        flags.append("stalled")
    if res.get("drained") is False:
        flags.append("undrained")
    if res.get("errors"):
        flags.append(f"{res['errors']} errors: {res.get('first_error', '')}"[:80])
    tput = {"value": res["throughput"], "srv": srv, "gen": gen, "flags": flags, "tcp": tcp}
    lat = res.get("latency", {})
    if kind == "handshake":
        return {"handshake": {**tput, "p50": lat.get("p50_ms"), "p99": lat.get("p99_ms")}}
    lsrv, lgen = _cpu(res["latency_cpu"])
    got, want = lat.get("samples", 0), lat.get("expected", 0)
    latency = {"value": got / want if want else None, "p50": lat.get("p50_ms"),
               "p99": lat.get("p99_ms"), "srv": lsrv, "gen": lgen, "flags": []}
    return {f"{kind}-tput": tput, f"{kind}-lat": latency}


def median(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs of every metric, and the spread of the result."""
    out: dict[str, Any] = {k: median([s.get(k) for s in samples])
                           for k in ("value", "p50", "p99", "srv", "gen")}
    vals = [s["value"] for s in samples if s.get("value") is not None]
    out["spread"] = ((max(vals) - min(vals)) / 2 / out["value"]
                     if len(vals) > 1 and out["value"] else None)
    out["flags"] = sorted({f for s in samples for f in s.get("flags", [])})
    out["tcp"] = {}
    for s in samples:
        for name, n in s.get("tcp", {}).items():
            out["tcp"][name] = out["tcp"].get(name, 0) + n
    out["runs"] = len(samples)
    return out


def estimate_seconds(servers: list[str], p: dict[str, dict[str, Any]], runs: int,
                     kinds: list[str] = KINDS) -> float:
    """A rough duration of the whole run (server starts, connecting, phases, drains)."""
    per = {  # seconds, from runs on a busy 2-CPU machine
        "fanout": 2.1 + p["fanout"]["n"] / 500 + p["fanout"]["L"] + p["fanout"]["d"],
        "private": 2.1 + p["private"]["n"] / 400 + p["private"]["L"] + p["private"]["d"],
        "handshake": 1.5 + p["handshake"]["d"],
        "memory": 2.8 + p["memory"]["n"] / 1500,
    }
    return sum(per[k] for k in kinds) * len(servers) * runs


def run_all(lab: Lab, servers: list[str], p: dict[str, dict[str, Any]], runs: int,
            kinds: list[str] = KINDS, log: Any = print) -> dict[tuple[str, str], dict[str, Any]]:
    """Every server x scenario x run, interleaved; medians per (row, server)."""
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    errors: dict[tuple[str, str], str] = {}
    for run in range(runs):
        for kind in kinds:
            order = servers[run % len(servers):] + servers[:run % len(servers)]
            for name in order:
                only = ONLY_ROWS.get(name)
                if lab.unavailable(name) or (only is not None and not any(
                        k == kind and key in only for key, k, _ in ROWS)):
                    continue
                t0 = time.monotonic()
                try:
                    got = measure(lab, name, kind, p[kind], f"{name}-{kind}-{run}")
                except Exception as e:  # report, go on with the others
                    for key, k, _ in ROWS:
                        if k == kind and (only is None or key in only):
                            errors[(key, name)] = f"{type(e).__name__}: {e}"[:160]
                    log(f"run {run + 1}/{runs} {kind:<9} {name:<17} ERROR {e}"[:240])
                    continue
                if only is not None:
                    got = {k: v for k, v in got.items() if k in only}
                for key, values in got.items():
                    samples.setdefault((key, name), []).append(values)
                brief = ", ".join(f"{k} {v['value']:,.1f}" for k, v in got.items()
                                  if v.get("value") is not None)
                log(f"run {run + 1}/{runs} {kind:<9} {name:<17} {brief} "
                    f"({time.monotonic() - t0:.1f}s)")
    table: dict[tuple[str, str], dict[str, Any]] = {
        cell: summarize(s) for cell, s in samples.items()}
    for cell, err in errors.items():
        if cell not in table:
            table[cell] = {"error": err}
    return table


def cap_check(lab: Lab, table: dict[tuple[str, str], dict[str, Any]], servers: list[str],
              p: dict[str, dict[str, Any]], cap: float = 0.5) -> list[dict[str, Any]]:
    """
    Each throughput scenario measured twice back to back, the generator free
    and then held to ``cap`` of one core, on the fastest server with a
    generator of its own core and on the one where the generator worked
    hardest: the same number means the generator was not the limit.
    """
    checks: list[dict[str, Any]] = []
    for key, kind in (("fanout-tput", "fanout"), ("private-tput", "private"),
                      ("handshake", "handshake")):
        measured = [s for s in servers if table.get((key, s), {}).get("value")]
        own_core = [s for s in measured if s not in ("improto-2w", "improto-cluster")]
        if not own_core:
            continue
        fastest = max(own_core, key=lambda s: table[(key, s)]["value"])
        busiest = max(own_core, key=lambda s: table[(key, s)].get("gen") or 0.0)
        for name in dict.fromkeys([fastest, busiest]):
            try:
                free = measure(lab, name, kind, p[kind], f"{name}-{kind}-free")[key]
                held = measure(lab, name, kind, p[kind], f"{name}-{kind}-cap", cap=cap)[key]
            except Exception as e:
                checks.append({"row": key, "server": name, "error": str(e)[:160]})
                continue
            checks.append({"row": key, "server": name, "uncapped": free["value"],
                           "uncapped_gen": free["gen"], "capped": held["value"],
                           "capped_gen": held["gen"], "cap": cap})
    return checks
